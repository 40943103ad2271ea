"""One module per channel behind the :class:`~llmscope.alerter.notifiers.base.Notifier` protocol."""
