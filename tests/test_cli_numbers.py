"""How every command line reads numbers (``siflow._cli.float_arg`` / ``int_arg``).

Decision (documented in ``siflow._cli`` and the README): plain ASCII decimal or
scientific notation only. Spaces, digit separators, non-ASCII digits and hexadecimal
are refused in one line naming the flag, exit status 2; so is a finite literal that
double precision turns into 0 or infinity. Python's own ``float()`` accepts all but
the last: these tests pin the difference.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io

import pytest

from siflow._cli import ArgumentParser, flag_names, float_arg, int_arg

REFUSED_FLOATS = [" 0.1", "0.1 ", "1_000", "\uff10.\uff11", "\u0661", "0x10", "1e", "--1",
                  "", "1,5", "infinity1", "1e-400", "-1e-400", "1e400", "-1e309"]  # fmt: skip
ACCEPTED_FLOATS = {"0.1": 0.1, "1e-3": 1e-3, "-.5": -0.5, "5.": 5.0, "+2E+2": 200.0,
                   "1e-320": 1e-320, "0e-999": 0.0, "1.7e308": 1.7e308}  # fmt: skip


@pytest.mark.parametrize("text", REFUSED_FLOATS)
def test_float_arg_refuses_what_float_would_bend(text):
    with pytest.raises(argparse.ArgumentTypeError):
        float_arg(text)


@pytest.mark.parametrize("text,value", ACCEPTED_FLOATS.items())
def test_float_arg_reads_plain_numbers_exactly_as_float_does(text, value):
    assert float_arg(text) == value == float(text)


def test_float_arg_passes_inf_and_nan_on_to_the_library():
    assert float_arg("inf") == float("inf") and float_arg("-Infinity") == float("-inf")
    assert float_arg("nan") != float_arg("nan")


def test_python_float_accepts_what_the_clis_refuse():
    """The reason for a parser of our own: float() bends all of these into numbers."""
    assert float(" 0.1") == 0.1 and float("1_000") == 1000.0 and float("\uff11") == 1.0
    assert float("1e-400") == 0.0 and float("1e400") == float("inf")


@pytest.mark.parametrize("text,value", [("20000", 20000), ("-3", -3), ("1e6", 10**6),
                                        ("2.5e3", 2500), ("1E12", 10**12), ("007", 7)])  # fmt: skip
def test_int_arg_reads_whole_numbers(text, value):
    assert int_arg(text) == value


@pytest.mark.parametrize("text", ["1.5", "1e-1", "1_000", " 3", "\uff13", "0x10", "nan", "inf",
                                  "1.0", "", "2.5e0"])  # fmt: skip
def test_int_arg_refuses_what_is_not_a_plain_whole_number(text):
    with pytest.raises(argparse.ArgumentTypeError):
        int_arg(text)


def test_the_parser_uses_them_for_type_float_and_int_in_groups_too():
    p = ArgumentParser(prog="x")
    p.add_argument("--lr", type=float)
    p.add_argument_group("g").add_argument("--steps", type=int)
    assert p.parse_args(["--lr", "1e-3", "--steps", "1e4"]) == argparse.Namespace(
        lr=1e-3, steps=10_000
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        p.parse_args(["--steps", "1_000"])
    assert exc.value.code == 2
    assert err.getvalue().count("\n") == 1 and "--steps" in err.getvalue()


CLIS = {
    "theory": ("siflow._theory_cli", ["--wd", "1e-3"]),
    "simulate": ("siflow._simulate_cli", ["--wd", "1e-3", "--steps", "5", "--no-figure"]),
    "sweep": ("siflow._sweep_cli", ["--wd", "1e-3", "1e-2", "--n-wd", "2"]),
}


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.parametrize("text", [" 0.1", "1_000", "\uff10.\uff11", "1e-400"])
def test_every_cli_refuses_a_bent_number_in_one_line_naming_the_flag(
    cli, text, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    module, rest = CLIS[cli]
    lr = [text] if cli != "sweep" else [text, "1"]
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--lr", *lr, *rest])
        except SystemExit as e:
            code = e.code
    assert code == 2, err.getvalue()
    assert err.getvalue().count("\n") == 1 and "--lr" in err.getvalue(), err.getvalue()
    assert not any(tmp_path.iterdir()), "nothing is written for a refused command"


def test_flag_names_translates_parameter_names_only():
    msg = "pass max_hours= or out= (out=None); n_lr=3 is fine; workers=, then"
    flags = {"max_hours": "--max-hours", "out": "--out", "workers": "--workers"}
    assert flag_names(msg, flags) == (
        "pass --max-hours or --out (out=None); n_lr=3 is fine; --workers, then"
    )
