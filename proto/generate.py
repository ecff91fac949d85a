"""Regenerate the Python stubs of ``proto/grpc_service.proto`` (run via ``make proto``).

Two fixes are applied to what ``grpc_tools.protoc`` writes, so the output works as a package
and beside other copies of the same service:

* ``import grpc_service_pb2`` in the gRPC stub becomes a package-relative import;
* the messages are registered in a private descriptor pool instead of protobuf's default
  pool. ``tritonclient.grpc`` (and KServe) register their own ``inference.*`` messages under
  the same file name in the default pool; sharing it would make importing podserve and
  tritonclient in one process fail with "duplicate file name grpc_service.proto". The wire
  format does not depend on the pool.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT = ROOT / "src" / "podserve" / "protocol" / "grpc" / "_generated"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
        f"--python_out={OUT}", f"--pyi_out={OUT}", f"--grpc_python_out={OUT}",
        str(PROTO_DIR / "grpc_service.proto"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    pb2 = OUT / "grpc_service_pb2.py"
    text, n = re.subn(
        r"^DESCRIPTOR = _descriptor_pool\.Default\(\)\.AddSerializedFile\(",
        "_POOL = _descriptor_pool.DescriptorPool()  # private: see proto/generate.py\n"
        "DESCRIPTOR = _POOL.AddSerializedFile(",
        pb2.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    if n != 1:
        sys.exit(f"{pb2}: expected one default-pool registration, found {n}")
    pb2.write_text(text, encoding="utf-8")
    stub = OUT / "grpc_service_pb2_grpc.py"
    text, n = re.subn(
        r"^import grpc_service_pb2 as",
        "from . import grpc_service_pb2 as",
        stub.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    if n != 1:
        sys.exit(f"{stub}: expected one 'import grpc_service_pb2' line, found {n}")
    stub.write_text(text, encoding="utf-8")
    init = OUT / "__init__.py"
    init.write_text('"""Generated from proto/grpc_service.proto by `make proto`; do not edit."""\n')
    print(f"generated {', '.join(sorted(p.name for p in OUT.glob('grpc_service_pb2*')))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
