"""CPU peers of pairsmith's encoder, each in its own pinned virtual environment.

``run.py``: the side-by-side bench (``make bench-peers``); ``envs.py``: the environments;
``worker.py``: one contender per process; ``infinity.py``: infinity-emb's REST server for
``bench/serve_bench.py``; ``int8_levers.py``: static int8 quality levers.
"""

from .infinity import InfinityPeer, find_infinity, rss_mib

__all__ = ["InfinityPeer", "find_infinity", "rss_mib"]
