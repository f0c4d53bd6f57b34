"""Coverage-guided fuzzing of the wire codec and the session state machine (issue 7).

``targets`` holds the fuzz targets (plain functions taking ``bytes``), ``harness``
runs one of them under atheris/libFuzzer, ``record_seeds`` recorded the seed
corpus in ``seeds/`` from real client traffic, and ``crashes/`` receives inputs
that crashed a long run (``bench/fuzz_long.py``) until they become regression
tests in ``tests/test_fuzz.py``.
"""
