"""No CA certificates are read at import (the runner's HTTP client builds its SSL context on its
first https connection; the simulator's aiohttp has its default SSL contexts load them on their
first handshake), and https is still verified: a trusted server answers, a server the default
CAs do not vouch for is refused. Each case runs in a fresh interpreter, where the import
happens (tests/data/tls holds a self-signed certificate for 127.0.0.1, for these tests only)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TLS = ROOT / "tests" / "data" / "tls"

# a TLS server answering GET /api/v1/models, and the runner's endpoint asking it
SCRIPT = textwrap.dedent("""\
    import asyncio, ssl, sys
    from runner.client import Endpoint
    from runner.config import Provider
    from runner.errors import ProviderError

    BODY = b'{"data": [{"id": "m"}]}'

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            if b"\\r\\n\\r\\n" in data:
                self.transport.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                                     b"Content-Length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY))

    async def main():
        server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_side.load_cert_chain(sys.argv[1], sys.argv[2])
        server = await asyncio.get_running_loop().create_server(
            Answer, "127.0.0.1", 0, ssl=server_side)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/v1"
        provider = Provider("local", url, "LOCAL_KEY", {}, openrouter=False, stream_usage=True)
        async with server, Endpoint(provider, url, "sk-or-v1-TESTSECRET", connections=1) as e:
            try:
                print([entry["id"] for entry in await e.models(timeout_s=10)])
            except ProviderError as exc:
                print("refused:", exc)

    asyncio.run(main())
""")


def _run(code: str, *args: str, cert_file: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if cert_file is not None:
        env["SSL_CERT_FILE"] = str(cert_file)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=env, timeout=60)
    return out.stdout.strip()


def test_importing_the_client_and_the_simulator_reads_no_ca_certificates() -> None:
    loaded = _run("import ssl, runner.client, runner.simulator, aiohttp.connector as c\n"
                  "print(ssl.SSLContext.cert_store_stats(c._SSL_CONTEXT_VERIFIED)['x509_ca'])",
                  cert_file=TLS / "cert.pem")
    assert loaded == "0"


def test_https_to_a_server_the_default_cas_trust_is_answered() -> None:
    out = _run(SCRIPT, str(TLS / "cert.pem"), str(TLS / "key.pem"), cert_file=TLS / "cert.pem")
    assert out == "['m']"


def test_https_to_a_server_no_default_ca_trusts_is_refused(tmp_path: Path) -> None:
    no_cas = tmp_path / "empty.pem"
    no_cas.write_text("")
    out = _run(SCRIPT, str(TLS / "cert.pem"), str(TLS / "key.pem"), cert_file=no_cas)
    assert out.startswith("refused:") and "certificate verify failed" in out.lower()
