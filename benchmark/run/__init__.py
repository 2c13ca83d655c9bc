"""One run of the protocol.

The specification, workspace, checkpoints, attack cells, suites, worst cases, validity, sanity
flags, admission rules, throughput and `execute`, the one entry point every run goes through.
"""
