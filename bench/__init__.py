"""Benchmarks of imgpipe's speed and scale on one machine (`python bench/run.py --help`)."""
