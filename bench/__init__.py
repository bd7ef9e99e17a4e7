"""Benchmark harness for securetransport: `python -m bench` (`make bench`).

Runs our server and peer FTP servers on loopback, applies the same curl and ftplib
loads to each, alternating servers run by run, and prints a table of medians with
ratios. Not a test: nothing here asserts timings. See docs/benchmarks.md.
"""
