"""The API's store; implements the dashboard's :class:`~llmscope.web.data.DashboardData`.

``Store`` is assembled from one part per concern on ``store_base.StoreBase``: ``chart_store``
(charts and re-baselines), ``violation_store`` (violations and people's actions on them),
``overview_store`` (the landing page), ``model_store`` (models, their health and switches),
``settings_store`` (the dashboard's settings) and ``export_store`` (dead letters, exports).
"""

from __future__ import annotations

from llmscope.api.chart_store import ChartStore
from llmscope.api.export_store import ExportStore
from llmscope.api.model_store import ModelStore
from llmscope.api.overview_store import OverviewStore
from llmscope.api.settings_store import SettingsStore
from llmscope.api.violation_store import ViolationStore


class Store(ChartStore, ViolationStore, OverviewStore, ModelStore, SettingsStore, ExportStore):
    """The API's data access over an asyncpg pool."""
