"""Engine outside vs inside a CVM: the TEE hardware's share of the cost.

*Inside* is an appliance running in a CVM: on a TEE host the one ``install.sh`` started (found
through the appliance's record), any running appliance named with ``--cvm-url``, or, with
``--cvm vm``, the sealed image booted here under QEMU/TCG (``appliance.vm``). *Outside* is the
same engine in a local simulated appliance on the host. Both are measured through their gateway
with the same client, the same work items and interleaved order in one run, next to the local
engine direct; the hardware's share is the ratio inside / outside.

The CVM's attestation is verified, exactly as ``openpcc verify`` does it, before anything is
measured; a node that fails is never measured. A SIMULATED node (``sim-*`` evidence) is measured
and reported as such: its ratio measures emulation or virtualisation, not TEE hardware.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance import lifecycle
from appliance.state import ApplianceRecord, StatePaths
from attest.bundle import ClientPolicy, TrustAnchors, VerifiedNode
from attest.errors import (
    DecryptError,
    OpenPCCError,
    ParseError,
    PolicyError,
    VerificationError,
)
from attest.sevsnp.validate import SnpPolicy
from bench import stats
from bench.gpu import detect_gpus
from bench.loadgen import CellResult, direct_streamer, run_streamer_cell, sealed_streamer
from bench.stack import REPO_ROOT, EngineChoice, Stack, free_port
from bench.workload import WorkItem
from client_cli.render import SIMULATED_BANNER
from client_cli.session import Session
from client_cli.trust import FileCheckpointStore, TrustStore, load_policy
from server.engine_http import EngineHttp

__all__ = [
    "PAIR_CONFIGS",
    "PAIR_LABELS",
    "SIMULATED_WARNING",
    "TEST_IMAGE_RECIPE",
    "CvmTarget",
    "appliance_target",
    "emulated_target",
    "measure_pair",
    "node_facts",
    "outside_engine",
    "summarize_pair",
    "trust_material",
    "url_target",
    "verify_target",
]

PAIR_CONFIGS = ("direct", "outside", "inside")
PAIR_LABELS: Mapping[str, str] = {
    "direct": "engine direct (host, no gateway)",
    "outside": "client -> gateway, engine outside (host)",
    "inside": "client -> gateway, engine inside the CVM",
}
SIMULATED_WARNING = (
    f"{SIMULATED_BANNER}: the appliance measured as 'inside the CVM' presents SIMULATED "
    "attestation evidence, so no TEE hardware protects it; the inside/outside ratio measures "
    "emulation/virtualisation (or only a second process), not the cost of TEE hardware"
)
TEST_IMAGE_RECIPE = REPO_ROOT / "tests" / "cvm_boot" / "image" / "image-test.toml"
"""``--cvm vm``'s default: the sealed test image with the synthetic engine (Gemma under TCG
emulation takes minutes per answer)."""

# The engine a release manifest names -> the same engine outside the CVM.
_MANIFEST_ENGINES = {"vllm": "vllm", "llama-cpp": "embedded", "fake-engine-for-tests": "synthetic"}


@dataclass(frozen=True, slots=True)
class CvmTarget:
    """A running appliance to measure as *inside*, and what a client trusts to verify it."""

    url: str
    how: str
    """How it was named: ``--cvm-url``, ``--cvm vm`` or ``this host's appliance``."""
    trust: TrustAnchors
    policy: ClientPolicy
    trust_source: str
    checkpoints: FileCheckpointStore | None = None
    pids: Mapping[str, int] = field(default_factory=dict)
    """Local processes that are the CVM (QEMU's for ``--cvm vm``), for CPU accounting."""


def trust_material(
    path: Path | None,
) -> tuple[TrustAnchors, ClientPolicy, FileCheckpointStore | None, str]:
    """What verifies the CVM: an ``openpcc`` client configuration (what ``openpcc trust``
    writes; default: this user's) or an appliance state directory (what ``up`` verifies with)."""
    if path is None or any(
        (path / n).exists() for n in ("log-keys.txt", "simulation-roots.pem", "policy.toml")
    ):
        store = TrustStore(path) if path is not None else TrustStore.default()
        policy = load_policy(store.policy_path)
        return (
            store.anchors(),
            policy,
            store.checkpoints(),
            f"openpcc trust store {store.directory}",
        )
    paths = StatePaths(path)
    if paths.record.exists() and (paths.log / "log.vkey").exists():
        anchors = lifecycle.trust_anchors(paths)
        return anchors, ClientPolicy(snp=SnpPolicy()), None, f"appliance state {paths.root}"
    raise ParseError(
        f"--cvm-trust {path}: neither an openpcc client configuration (log-keys.txt) nor an "
        "appliance state directory (appliance.json, log/log.vkey)",
        hint="`openpcc trust --log-key KEY [--simulated PEM]` with OPENPCC_CONFIG_DIR=DIR "
        "writes one",
    )


def url_target(url: str, trust: Path | None) -> CvmTarget:
    anchors, policy, checkpoints, source = trust_material(trust)
    return CvmTarget(url.rstrip("/"), "--cvm-url", anchors, policy, source, checkpoints)


def appliance_target(paths: StatePaths) -> tuple[CvmTarget | None, str]:
    """On a TEE host: the appliance ``install.sh`` started, if it runs in a CVM; else why not."""
    try:
        record = ApplianceRecord.load(paths.record)
    except OpenPCCError:
        return None, f"no appliance is provisioned in {paths.root}"
    if record.mode not in ("sev-snp", "tdx"):
        return None, f"the appliance in {paths.root} is {record.mode}, not in a CVM"
    target = CvmTarget(
        record.gateway_url,
        "this host's appliance",
        lifecycle.trust_anchors(paths),
        ClientPolicy(snp=SnpPolicy()),
        f"appliance state {paths.root}",
    )
    return target, ""


@contextlib.contextmanager
def emulated_target(
    state: Path, image_recipe: Path, *, log: Callable[[str], None], timeout: float = 900.0
) -> Iterator[CvmTarget]:
    """``--cvm vm``: the sealed image booted under QEMU/TCG in a private state directory."""
    from appliance import vm
    from cvm_boot.image.run import vm_pid

    paths = StatePaths(state)
    try:
        up = vm.up_vm(
            paths,
            image_recipe=image_recipe,
            accel="tcg",
            port=free_port(),
            timeout=timeout,
            progress=lambda m: log(f"  [cvm vm] {m}"),
        )
        pid = vm_pid(paths.vm)
        yield CvmTarget(
            up.record.gateway_url,
            "--cvm vm",
            lifecycle.trust_anchors(paths),
            ClientPolicy(snp=SnpPolicy()),
            f"appliance state {paths.root}",
            pids={"qemu": pid} if pid is not None else {},
        )
    finally:
        vm.down_vm(paths)


def _refused(target: CvmTarget, e: OpenPCCError) -> OpenPCCError:
    """The same error class, saying which node failed and that nothing was measured."""
    hint = e.hint or (
        f"check what {target.trust_source} trusts (`openpcc verify {target.url}` shows every "
        "check); the benchmark never measures a node it could not verify"
    )
    what = f"the CVM at {target.url} ({target.how}) did not verify; nothing was measured"
    if isinstance(e, VerificationError):
        return VerificationError(e.check, f"{e.detail} — {what}", hint=hint)
    if isinstance(e, PolicyError):
        return PolicyError([*e.violations, what], check=e.check, hint=hint)
    if isinstance(e, DecryptError):
        return OpenPCCError(f"{e} — {what}", hint=hint)
    return type(e)(f"{e} — {what}", hint=hint)


async def verify_target(target: CvmTarget) -> VerifiedNode:
    """Verify the CVM as ``openpcc verify`` does; raises the failing check's error."""
    async with Session(
        target.url, trust=target.trust, policy=target.policy, checkpoints=target.checkpoints
    ) as s:
        try:
            run = await s.verify()
        except OpenPCCError as e:
            raise _refused(target, e) from e
    if run.node is None:
        assert run.error is not None
        raise _refused(target, run.error)
    return run.node


def node_facts(node: VerifiedNode) -> dict[str, object]:
    """What the verified node is: TEE, measurement, model and engine its manifest names."""
    manifest = node.manifest
    model = manifest.get("model")
    return {
        "tee": node.tee,
        "simulated": node.simulated,
        "measurement": node.measurement.hex(),
        "log_index": node.log_index,
        "tree_size": node.tree_size,
        "recipe": manifest.get("recipe"),
        "model": model.get("id") if isinstance(model, Mapping) else None,
        "engine": manifest.get("engine"),
        "gpus": len(node.gpus),
        "verified_at": node.verified_at.isoformat(),
        "checks": [c.to_dict() for c in node.checks],
    }


def outside_engine(node: VerifiedNode, choice: str) -> EngineChoice:
    """The same engine as the CVM's, outside it: from its manifest unless ``choice`` names it."""
    engine = node.manifest.get("engine")
    engine = engine if isinstance(engine, Mapping) else {}
    model = node.manifest.get("model")
    model_id = str(model.get("id", "")) if isinstance(model, Mapping) else ""
    kind = choice
    if choice == "auto":
        name = str(engine.get("name", ""))
        if name not in _MANIFEST_ENGINES:
            raise ParseError(
                f"the CVM's manifest names engine {name!r}, which the bench cannot run outside",
                hint="name the outside engine: --cvm-engine synthetic|embedded|vllm",
            )
        kind = _MANIFEST_ENGINES[name]
    if kind == "synthetic":
        return EngineChoice("synthetic-max", "synthetic")
    if kind == "embedded":
        return EngineChoice("embedded", "embedded")
    if kind == "vllm":
        probe = detect_gpus()
        if not probe.gpus:
            raise OpenPCCError(
                f"vLLM outside the CVM needs a GPU on the host ({probe.problem}): a GPU passed "
                "through to the CVM cannot serve the host too",
                hint="measure on a host with a second GPU of the same kind",
            )
        args = engine.get("args")
        vargs = tuple(str(a) for a in args) if isinstance(args, list) else ()
        return EngineChoice("vllm", "vllm", model=model_id, args=vargs)
    raise ParseError(f"--cvm-engine {choice!r} is not one of auto, synthetic, embedded, vllm")


ItemsFor = Callable[[int, int], list[WorkItem]]


async def measure_pair(
    local: Stack,
    target: CvmTarget,
    engine: EngineChoice,
    levels: Sequence[int],
    rounds: int,
    items_for: ItemsFor,
    warm: Sequence[WorkItem],
    log: Callable[[str], None],
) -> list[CellResult]:
    """Direct, outside and inside, interleaved (A/B/C, B/C/A, ...), identical items per cell."""
    http = EngineHttp.for_url(local.engine_url)
    outside = Session(local.gateway_url, trust=local.trust, policy=local.policy)
    inside = Session(
        target.url, trust=target.trust, policy=target.policy, checkpoints=target.checkpoints
    )
    cells: list[CellResult] = []
    name = f"cvm-{engine.name}"
    try:
        try:
            await inside.node()  # verified again: the key every request is sealed to
        except OpenPCCError as e:
            raise _refused(target, e) from e
        await outside.node()
        streams = {
            "direct": direct_streamer(http),
            "outside": sealed_streamer(outside),
            "inside": sealed_streamer(inside),
        }
        pids = {"direct": local.pids(), "outside": local.pids(), "inside": dict(target.pids)}
        for config in PAIR_CONFIGS:
            await run_streamer_cell(streams[config], {}, name, config, warm, 4, -1)
        for r in range(rounds):
            for li, c in enumerate(levels):
                items = items_for(c, r)
                shift = (r + li) % len(PAIR_CONFIGS)
                for config in PAIR_CONFIGS[shift:] + PAIR_CONFIGS[:shift]:
                    cell = await run_streamer_cell(
                        streams[config], pids[config], name, config, items, c, r
                    )
                    cells.append(cell)
                    log(
                        f"  {name:<18} c={c:<3} r={r} {config:<8} {cell.tokens_per_s:9.0f} tok/s"
                        f"  errors {len(cell.samples) - len(cell.ok)}"
                    )
    finally:
        http.close()
        await outside.aclose()
        await inside.aclose()
    return cells


def summarize_pair(cells: Sequence[CellResult]) -> list[dict[str, object]]:
    """One row per (config, concurrency); ratios are medians over rounds of per-round ratios
    (to engine direct, and for *inside* to *outside*), all from this run."""
    by: dict[tuple[str, int], dict[int, CellResult]] = defaultdict(dict)
    for c in cells:
        by[(c.config, c.concurrency)][c.round] = c
    rows: list[dict[str, object]] = []
    for conc in sorted({c.concurrency for c in cells}):
        direct, outside = by.get(("direct", conc), {}), by.get(("outside", conc), {})
        for config in PAIR_CONFIGS:
            group = by.get((config, conc), {})
            if not group:
                continue
            ok = [s for c in group.values() for s in c.ok]
            to_direct: list[float] = []
            to_outside: list[float] = []
            added_ttft: list[float] = []
            added_vs_outside: list[float] = []
            for rnd, c in group.items():
                for base, ratios, added in (
                    (direct.get(rnd), to_direct, added_ttft),
                    (outside.get(rnd), to_outside, added_vs_outside),
                ):
                    if base is None or base.tokens_per_s <= 0:
                        continue
                    ratios.append(c.tokens_per_s / base.tokens_per_s)
                    added.append(_ttft_p50(c) - _ttft_p50(base))
            rows.append(
                {
                    "config": config,
                    "concurrency": conc,
                    "rounds": len(group),
                    "requests": len(ok),
                    "errors": sum(len(c.samples) - len(c.ok) for c in group.values()),
                    "ttft_s": stats.summary([s.ttft for s in ok if s.ttft is not None]),
                    "tpot_s": stats.summary([t for s in ok if (t := s.tpot) is not None]),
                    "e2e_s": stats.summary([s.e2e for s in ok if s.e2e is not None]),
                    "tokens_per_s": stats.median([c.tokens_per_s for c in group.values()]),
                    "tokens_per_s_rounds": [c.tokens_per_s for c in group.values()],
                    "requests_per_s": stats.median([c.requests_per_s for c in group.values()]),
                    "ratio_to_direct": stats.median(to_direct),
                    "ratio_to_direct_rounds": to_direct,
                    "ratio_inside_outside": stats.median(to_outside)
                    if config == "inside"
                    else None,
                    "ratio_inside_outside_rounds": to_outside if config == "inside" else [],
                    "added_ttft_p50_s": stats.median(added_ttft),
                    "added_ttft_p50_vs_outside_s": stats.median(added_vs_outside)
                    if config == "inside"
                    else None,
                }
            )
    return rows


def _ttft_p50(cell: CellResult) -> float:
    return stats.median([s.ttft for s in cell.ok if s.ttft is not None])
