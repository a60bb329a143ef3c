"""The suite's harness: what tests share beyond fixtures (those are in conftest.py).

Servers of our own (ZooKeeper, supervisord, the fault proxy) are in
``zkwatcher_supervisor.testing``; this package holds what only the tests use.
"""
