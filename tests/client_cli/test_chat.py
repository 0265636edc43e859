"""``openpcc chat`` driven through a terminal, against running simulated appliances."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pexpect

from attest.bundle import CHECK_ORDER

VENV_BIN = Path(sys.executable).parent
PROMPT = "you> "


def _chat(app: Any, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        str(VENV_BIN / "openpcc"),
        ["chat", *args],
        env=app.env,
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 200),
    )
    # Verified before the first prompt, and says what it is bound to.
    child.expect("bound to " + app.url)
    child.expect("SIMULATED — NOT CONFIDENTIAL")
    child.expect_exact(PROMPT)
    return child


def _quit(child: pexpect.spawn) -> None:
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_streams_answers_and_keeps_the_conversation(appliance: Any, tmp_path: Path) -> None:
    before = appliance.metric("openpcc_decrypted_requests_total")
    transcript = tmp_path / "chat.json"
    child = _chat(appliance, "--max-tokens", "4", "--save", str(transcript))
    child.sendline("hello brave world")
    child.expect(r"model>\S* echo: world brave hello")  # \S*: the label's style ends there
    # After each answer the status line shows the binding again, SIMULATED included.
    child.expect("bound to " + appliance.url + r".*SIMULATED — NOT CONFIDENTIAL")
    child.expect_exact(PROMPT)
    child.sendline("second question")
    child.expect_exact("echo: question second")
    child.expect_exact(PROMPT)
    _quit(child)
    assert appliance.metric("openpcc_decrypted_requests_total") == before + 2
    saved = transcript.read_text()
    assert "hello brave world" in saved and "echo: question second" in saved
    assert transcript.stat().st_mode & 0o777 == 0o600  # prompts and answers: owner-only


def test_chat_verify_shows_the_checks_table(appliance: Any) -> None:
    child = _chat(appliance)
    child.sendline("/verify")
    child.expect_exact("Attestation of " + appliance.url)
    for _name, title in CHECK_ORDER:  # every check, in the contract's order, each passed
        child.expect_exact(title)
        child.expect_exact("PASS")
    child.expect("SIMULATED — NOT CONFIDENTIAL")
    child.expect("VERIFIED")
    child.expect_exact(PROMPT)
    _quit(child)


def test_chat_reset_forgets_the_conversation(appliance: Any, tmp_path: Path) -> None:
    transcript = tmp_path / "chat.json"
    child = _chat(appliance, "--max-tokens", "3", "--save", str(transcript))
    child.sendline("remember this")
    child.expect_exact("echo: this remember")
    child.expect_exact(PROMPT)
    child.sendline("/reset")
    child.expect("conversation forgotten")
    child.expect_exact(PROMPT)
    child.sendline("fresh start")
    child.expect_exact("echo: start fresh")
    child.expect_exact(PROMPT)
    _quit(child)
    saved = transcript.read_text()
    assert "remember" not in saved and "fresh start" in saved


def test_chat_unknown_command_and_eof(appliance: Any) -> None:
    child = _chat(appliance)
    child.sendline("/nope")
    child.expect("unknown command")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_an_answer_and_the_next_question_is_answered(slow_appliance: Any) -> None:
    # 20 tokens/s: a 60-token answer takes 3 s, time enough to interrupt it.
    child = _chat(slow_appliance, "--max-tokens", "60")
    child.sendline("one two three")
    child.expect(r"model>\S* echo: three two one")
    child.sendintr()
    child.expect_exact("(answer stopped)")
    stopped = child.before
    assert stopped.count("echo:") < 15  # far fewer than the 60-token answer's 15 cycles
    child.expect("bound to " + slow_appliance.url)
    child.expect_exact(PROMPT)
    # Ctrl-C at the prompt does not leave; it says how to.
    child.sendintr()
    child.expect_exact("type /quit to leave")
    child.sendline("four five six")
    child.expect_exact("echo: six five four")
    child.expect("bound to " + slow_appliance.url)
    child.expect_exact(PROMPT)
    _quit(child)


def test_save_failures_are_one_line_and_an_empty_chat_overwrites_nothing(
    tmp_path: Path,
) -> None:
    from rich.console import Console

    from client_cli.chat import ChatLoop

    loop = ChatLoop.__new__(ChatLoop)
    loop.console = Console(record=True, width=200)
    loop.history = [{"role": "user", "content": "x"}]
    loop._save(tmp_path / "no" / "such" / "dir" / "t.json")
    out = loop.console.export_text()
    assert "error: cannot save the transcript to" in out and "Traceback" not in out
