"""Web layer of a node: explorer (beacons), dashboard (peers), JSON API, /health, /metrics."""
from node.web.api import make_web_app
from node.web.provider import (
    BadRequest,
    DashboardProvider,
    ExplorerProvider,
    Metric,
    NotFound,
)

__all__ = ["make_web_app", "ExplorerProvider", "DashboardProvider", "Metric", "NotFound", "BadRequest"]
