"""The model engine of the compute market: npc's batched engine, offered to swarm as its
``InferenceBackend``.

swarm never imports npc, so this module is where the two meet: it loads the engine for a model in
the store (``default`` is the game's own base model, the file every player has), lets it wear
installed skins through an ``AdapterPool``, and converts npc's plain results (``npc.serving``'s
``Completion``, ``Verdict``, ``Released``) into swarm's wire types field for field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from swarm.jobs.backend import Completion, Gate, Released, Verdict, WorkItem


def _completion(c) -> Completion:
    return Completion(custom_id=c.custom_id, tokens=list(c.tokens), text=c.text,
                      prompt_tokens=c.prompt_tokens, finish_reason=c.finish_reason)


class EngineBackend:
    """An ``InferenceBackend`` over ``npc.serving.Engine``."""

    def __init__(self, engine, pool=None):
        self.engine = engine
        self.pool = pool

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def generate(self, items: Sequence[WorkItem], skin: str | None = None, *,
                 gate: Gate | None = None,
                 on_done: Callable[[Completion], None] | None = None) -> list[Completion]:
        from npc.serving import Released as EngineReleased
        done = (lambda c: on_done(_completion(c))) if on_done is not None else None
        try:
            return [_completion(c) for c in self.engine.generate(items, skin, gate=gate,
                                                                 on_done=done)]
        except EngineReleased as r:
            raise Released([_completion(c) for c in r.done], list(r.undone)) from None

    def rescore(self, item: WorkItem, claim: Completion, skin: str | None = None) -> Verdict:
        v = self.engine.rescore(item, claim, skin)
        return Verdict(ok=v.ok, checked_tokens=v.checked_tokens, first_mismatch=v.first_mismatch,
                       reason=v.reason)

    def skin_checks(self):
        """(verify, install) for skins fetched to serve with this engine (see
        :func:`skin_checks`); None when the engine wears no skins."""
        if self.pool is None:
            return None
        return skin_checks(self.pool.store, self.pool.base_model, self.pool.base_gguf)

    def skins(self) -> tuple[str, ...]:
        """The installed skins made for the model served (what an offer can list)."""
        if self.pool is None:
            return ()
        return tuple(s.skin_id for s in self.pool.store.list()
                     if s.manifest.base_model == self.pool.base_model)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.engine.close()


def skin_fetcher(settings, backend, node: Callable):
    """What fetches a skin a shard names and this machine lacks, as worker.toml says
    (``fetch_skins``, ``max_skin_mb``): over the swarm node ``node()`` returns, checked by the
    engine's skin checks (signature, hashes, skin id, base model) and installed in its skin
    store; None when fetching is off or the engine wears no skins."""
    checks = getattr(backend, "skin_checks", lambda: None)()
    if not settings.fetch_skins or checks is None:
        return None
    from game.swarm_bridge import download_dir
    from swarm.jobs.skin_fetch import SkinFetcher
    verify, install = checks
    return SkinFetcher(node, download_dir() / "worker-skins", verify, install,
                       settings.max_skin_mb << 20)


def skin_checks(store, base_model: str, base_gguf: Path | None = None):
    """(verify, install) for a worker fetching skins into ``store`` (a ``SkinStore``): a fetched
    bundle must verify completely (signature, every file's hash), be the skin its torrent names
    and be made for ``base_model`` (with ``base_gguf``, its tensors must fit that model), before
    it is installed (verified once more by the store)."""
    from npc.skins.bundle import verify_bundle
    from npc.skins.manifest import SkinError
    from swarm.content import ContentError, ContentRef

    def verify(ref: ContentRef, path: Path) -> None:
        try:
            verified = verify_bundle(path, base_model=base_model, base_gguf=base_gguf)
        except SkinError as e:
            raise ContentError(f"the skin bundle does not verify: {e}") from None
        if verified.skin_id != ref.id:
            raise ContentError(f"the bundle is skin {verified.skin_id[:16]}…, but its torrent "
                               f"promises {ref.id[:16]}…")

    def install(path: Path) -> str:
        try:
            return store.install(path, base_model=base_model, base_gguf=base_gguf)
        except SkinError as e:
            raise ContentError(f"the skin store refused the bundle: {e}") from None
    return verify, install


def engine_configuration(store, base, model: str = "default", *, width: int | None = None,
                         say: Callable[[str], None] = lambda s: None):
    """(model record, ``EngineOptions``) ``load_backend(model)`` runs: ``base`` (the store's
    default model) for ``default``, a model id in ``store``, or for ``tuned`` the configuration
    ``npc.tuning.choose`` measured fastest on this machine, on every core."""
    from npc.serving import EngineOptions
    options = EngineOptions() if width is None else EngineOptions(width=width)
    if model != "tuned":
        return (base if model == "default" else store.get(model)), options
    from npc.tuning import choose
    choice = choose(store, base, say=say)
    return store.get(choice.model), replace(
        options, use_extra_bufts=choice.use_extra_bufts,
        n_threads=max(choice.n_threads, choice.n_threads_batch))


def load_backend(model: str = "default", *, width: int | None = None,
                 self_check: bool = True, say: Callable[[str], None] = lambda s: None
                 ) -> EngineBackend:
    """The engine for ``model`` (a model id in the store, ``default``, or ``tuned``), wearing
    installed skins on request. ``tuned`` runs the configuration the game measured fastest on
    this machine (``npc.tuning.choose``: a requantization of the default model and llama.cpp's
    extra buffer types when they win; measured on first use, ``say`` tells of it), on every core:
    what ``hearth serve`` answers with, where nobody re-scores the work. With ``self_check`` the
    engine first generates a few items and re-scores them: a configuration that would see its
    own genuine work rejected refuses to serve (``npc.serving.ServingError``)."""
    from npc.adapters import AdapterPool
    from npc.serving import Engine
    from npc.skins.store import SkinStore
    from npc.store import ModelStore

    store = ModelStore()
    base = store.ensure_default()
    record, options = engine_configuration(store, base, model, width=width, say=say)
    engine = Engine(store.path(record.blake3), options, model_id=record.blake3)
    pool = AdapterPool(engine, SkinStore(), base_model=base.blake3,
                       base_gguf=store.path(base.blake3))
    engine.skins = pool.get
    if self_check:
        engine.self_check()
    return EngineBackend(engine, pool)
