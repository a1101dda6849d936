"""The run's measurements and reports (SPEC section 7): what a test measured
(:mod:`.metrics`), the targets it is judged by (:mod:`.metric_targets`), the report
document (:mod:`.document`) and its files (:mod:`.writer`, :mod:`.html`, :mod:`.plots`),
and the pytest hooks that gather them (:mod:`.plugin`)."""
