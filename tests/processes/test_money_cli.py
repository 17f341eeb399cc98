"""`python -m kling_demo price` and `balance`, and the price in `generate`'s progress: real subprocesses against
real sandboxes on loopback, whose stand-in table is $0.28 a second unless a test sets another."""

from __future__ import annotations

from kling_demo.models import Quote
from kling_demo.words import Voice, money
from tests.processes.test_cli import CANARY_KEY, run_cli


def test_price_and_balance_print_what_the_api_answers(make_sandbox, tmp_path):
    sandbox = make_sandbox(price_per_second=0.3, balance=12.4)
    price = run_cli(tmp_path, "price", "--duration", "10", api_key=CANARY_KEY, base_url=sandbox.base_url)
    assert price.returncode == 0, price.stderr
    assert price.stdout == "$3.00\n"
    balance = run_cli(tmp_path, "balance", api_key=CANARY_KEY, base_url=sandbox.base_url)
    assert balance.returncode == 0 and balance.stdout == "$12.40\n", balance.stderr
    assert CANARY_KEY not in price.stderr + balance.stderr
    assert sandbox.stats()["submissions"] == 0


def test_a_rejected_key_exits_3_without_printing_it(make_sandbox, tmp_path):
    sandbox = make_sandbox(api_key="the-only-key")
    balance = run_cli(tmp_path, "balance", api_key=CANARY_KEY, base_url=sandbox.base_url)
    assert balance.returncode == 3 and balance.stdout == ""
    assert "rejected the API key" in balance.stderr and CANARY_KEY not in balance.stderr


def test_without_a_key_the_price_is_free_and_the_sandbox_table_is_only_mentioned(tmp_path):
    price = run_cli(tmp_path, "price", "-d", "10", api_key=None)
    assert price.returncode == 0, price.stderr
    assert price.stdout == "free (sandbox)\n"
    assert "nothing is billed" in price.stderr and "$2.80" in price.stderr


def test_generate_shows_the_price_in_its_progress(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(inference_seconds=1.0)
    result = run_cli(tmp_path, "generate", make_image(), "--prompt", "waves", "--duration", "10",
                     api_key=CANARY_KEY, base_url=sandbox.base_url)
    assert result.returncode == 0, result.stderr
    uploading = next(line for line in result.stderr.splitlines() if "uploading" in line)
    assert f"Price: {money(2.80)}." in uploading
    done = next(line for line in result.stderr.splitlines() if "] done" in line)
    # The command line pays with the server's key, which may read its billing: the charge, as the page states it.
    assert Voice(for_visitors=False).cost(Quote(2.80), charged=2.80) in done and "cost $2.80 (charged)" in done
