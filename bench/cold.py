"""One cold verification in a fresh interpreter: ``python -m bench.cold snp VECTORS`` or
``python -m bench.cold bundle BUNDLE.json NONCE_HEX STATE_DIR``. Prints one JSON line of seconds:
imports, trust anchors (bundle only), the first (cold) verification, the second (warm)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    t0 = time.perf_counter()
    from attest.sevsnp.abi import parse_report
    from attest.sevsnp.verify import load_certificates, verify_report

    kind = argv[0]
    out: dict[str, float] = {}
    if kind == "snp":
        from bench.micro import SNP_NOW

        vectors = Path(argv[1])
        raw = (vectors / "snp" / "milan_v2_report.bin").read_bytes()
        der = (vectors / "snp" / "milan_v2_vcek.der").read_bytes()
        out["import_s"] = time.perf_counter() - t0
        for label in ("cold_s", "warm_s"):
            t = time.perf_counter()
            verify_report(parse_report(raw), load_certificates(der), now=SNP_NOW)
            out[label] = time.perf_counter() - t
    elif kind == "bundle":
        from appliance.lifecycle import trust_anchors
        from appliance.state import StatePaths
        from attest.bundle import ClientPolicy, run_verification
        from attest.sevsnp.validate import SnpPolicy

        bundle = json.loads(Path(argv[1]).read_text())
        nonce = bytes.fromhex(argv[2])
        out["import_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        trust = trust_anchors(StatePaths(Path(argv[3])))
        policy = ClientPolicy(snp=SnpPolicy())
        out["anchors_s"] = time.perf_counter() - t
        for label in ("cold_s", "warm_s"):
            t = time.perf_counter()
            run = run_verification(bundle, trust=trust, policy=policy, nonce=nonce)
            out[label] = time.perf_counter() - t
            if run.node is None:
                raise SystemExit(f"bundle did not verify: {run.error}")
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
