"""Joining Ray, one way for every stage that offers `backend: ray` (data, rag, `llmkit generate`).

`address` first, then `$RAY_ADDRESS` (what `ray start --head` prints and what Ray's job tools set), else a Ray
started in this process on 127.0.0.1 with its session files under $LLMKIT_HOME/ray (Ray's default is the system
temp folder). Ray's usage reports are switched off unless the user set `RAY_USAGE_STATS_ENABLED`.

On the 2-core machines here Ray costs ~10 s to start and ~0.8 GB idle (FACTS.md): it pays only when the work
outgrows one machine, which is why every `backend:` defaults to local.
"""

from __future__ import annotations

import logging
import os

from llmkit.errors import MissingExtra

INSTALL = "pip install 'llmkit[scale]'"


def connect(address: str | None = None, what: str = "backend: ray"):
    """The `ray` module, initialized (a no-op when this process already is)."""
    try:
        import ray
    except ImportError:
        raise MissingExtra(f"{what} needs Ray: {INSTALL}") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # WARNING: Ray's "Connecting to existing Ray cluster ..." lines are not llmkit's output
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        from llmkit.models import home

        # Ray 2.60 warns that a new local cluster has token authentication on: what we want, nothing to do
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", _temp_dir=str(home() / "ray"), logging_level=logging.WARNING)
    return ray
