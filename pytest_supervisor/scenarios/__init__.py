"""YAML scenario files (SPEC section 6): read and checked (:mod:`.document`, :mod:`.checks`,
:mod:`.loader`, :mod:`.steps`), run against a supervisor (:mod:`.runner`) and collected as
pytest items (:mod:`.items`)."""
