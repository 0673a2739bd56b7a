"""The OpenAI routes as Ray Serve replicas (the ``ray`` extra; from a checkout of guanaco_rt:
``pip install '.[ray]'``).

Each replica holds one Model and its session pool and serves the same routes as
``guanaco-rt serve`` (guanaco_rt.server); Ray Serve's proxy spreads requests over the
replicas and restarts one that dies. Every response names its replica in the
``X-Guanaco-Server`` header.

On one machine::

    import ray
    from ray import serve
    from guanaco_rt.integrations.ray_serve import app
    serve.run(app("model.gguf", num_replicas=2), route_prefix="/")      # http://127.0.0.1:8000/v1

On a cluster: start Ray on every node (``ray start --head`` on one, ``ray start
--address=HEAD:6379`` on the others), put the model file at the same path on every node
(or a shared file system), then run the same ``serve.run`` from a driver connected with
``ray.init(address="auto")``; ``serve.start(http_options={"host": "0.0.0.0"})`` first to
listen beyond localhost. Give each replica the cores it uses with
``ray_actor_options={"num_cpus": N}`` and ``n_threads=N`` so that Ray does not place
more replicas on a node than it has cores.
"""
from __future__ import annotations

from ..api import LLM
from . import missing_extra

try:
    from ray import serve

    from ..server import create_app
except ModuleNotFoundError as e:
    raise missing_extra(__name__, "ray", e) from e


@serve.ingress()
class GuanacoReplica:
    """One replica: a guanaco_rt.LLM (Model + session pool) behind the OpenAI routes."""

    def __init__(self, model: str | None = None, n_ctx: int = 2048, n_sessions: int = 1,
                 n_threads: int | None = None, kv_f16: bool = False, api_key: str | None = None,
                 max_queue: int = 64, model_name: str | None = None):
        self.llm = LLM(model, n_ctx=n_ctx, n_sessions=n_sessions, n_threads=n_threads, kv_f16=kv_f16,
                       model_name=model_name)
        self.api_key, self.max_queue = api_key, max_queue
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:                     # constructed outside Serve (tests of the class itself)
            self.replica_id = "local"

    def __serve_build_asgi_app__(self):
        return create_app(self.llm, self.api_key, self.max_queue, server_id=self.replica_id)


def app(model: str | None = None, *, num_replicas: int = 2, ray_actor_options: dict | None = None,
        name: str = "guanaco_rt", **llm_kw):
    """A bound Serve application: ``num_replicas`` replicas of ``model`` (None: the demo
    model, fetched on each node that lacks it). ``llm_kw``: n_ctx, n_sessions, n_threads,
    kv_f16, api_key, max_queue, model_name (as guanaco-rt serve)."""
    opts = {"num_cpus": llm_kw.get("n_threads") or 1, **(ray_actor_options or {})}
    dep = serve.deployment(name=name, num_replicas=num_replicas, ray_actor_options=opts,
                           max_ongoing_requests=max(8, llm_kw.get("n_sessions", 1) + llm_kw.get("max_queue", 64))
                           )(GuanacoReplica)
    return dep.bind(model, **llm_kw)
