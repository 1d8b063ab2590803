"""Scenarios: declared runs of attach, detach, migration and faults on a two-node lab,
for CI systems. ``spec`` reads and checks scenario files into typed values before
anything runs; ``junit`` writes results as JUnit XML."""
