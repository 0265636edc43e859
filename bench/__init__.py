"""Benchmarks: serving latency and throughput per configuration, micro timings, cold start.

``python -m bench [SCENARIO]`` (or ``openpcc-appliance bench``) writes every raw sample to
``bench/results/<timestamp>/results.json``, a markdown report and PNG plots beside it. Overheads
are always ratios to the engine-direct configuration measured in the same run.
"""
