"""An embedded OpenRouter-compatible HTTP server: `SimModel`s (prices, speed, faults) in, a
loopback endpoint speaking OpenRouter (/api/v1) and plain OpenAI (/v1) out, with the batch API
(`/files`, `/batches`: see `batches.py`) under both.

    with Simulator(seed=1) as sim:
        client = AsyncOpenAI(api_key="sim", base_url=sim.base_url, max_retries=0)
        ...
        spent = sim.billed_usd()  # the server's own bill: one `Charge` per request (bill())
"""

# first: aiohttp imported with its CA certificates read only if a TLS handshake needs them
from runner import lazy_tls  # noqa: F401
from runner.simulator.account import Account
from runner.simulator.arrivals import Arrival
from runner.simulator.bill import Charge, read_bill, total_usd
from runner.simulator.capacity import Capacity
from runner.simulator.models import DEFAULT_MODELS, FAULT_NAMES, Faults, SimModel
from runner.simulator.server import Simulator, serve

__all__ = [
    "DEFAULT_MODELS", "FAULT_NAMES", "Account", "Arrival", "Capacity", "Charge", "Faults",
    "SimModel", "Simulator", "read_bill", "serve", "total_usd",
]
