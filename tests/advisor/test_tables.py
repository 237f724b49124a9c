import io

from advisor.tables import Console, Table, parse, plain, wrap


def test_markup_tags_and_literal_brackets():
    assert parse("[bold]a[/] b") == [("a", ("bold",)), (" b", ())]
    assert parse("[bold red]x[/]") == [("x", ("bold", "red"))]
    # only style names are tags: an engine label or an interval stays as printed
    assert plain("fp8 [vllm] [0.2-0.4] [/]x") == "fp8 [vllm] [0.2-0.4] x"
    assert plain("[dim]unclosed") == "unclosed"


def test_wrap_respects_width_and_cuts_long_words():
    lines = wrap("aaa bbb ccc dddddddddd", 7)
    texts = [" ".join("".join(t for t, _ in w) for w in line) for line in lines]
    assert texts == ["aaa bbb", "ccc", "ddddddd", "ddd"]
    assert all(len(t) <= 7 for t in texts)


def _table():
    t = Table(title="Title")
    for c in ("name", "why"):
        t.add_column(c)
    t.add_row("fp8", "a long reason " * 20)
    t.add_row("[red]infeasible[/]", "")
    return t


def test_table_fits_width_and_keeps_every_word():
    for width in (60, 100, 150):
        lines = _table().lines(width)
        assert max(len(x) for x in lines) <= width
        body = " ".join(lines)
        assert body.count("reason") == 20 and "infeasible" in body and "[red]" not in body
        assert lines[0].strip() == "Title" and lines[1].startswith("┏") and lines[-1].startswith("└")
        assert len({len(x) for x in lines[1:]}) == 1  # every border and row line is as wide as the others


def test_console_plain_when_piped_and_ansi_when_asked():
    buf = io.StringIO()
    Console(buf).print("[bold]x[/] y")
    assert buf.getvalue() == "x y\n"
    buf = io.StringIO()
    Console(buf, color=True).print("[bold]x[/] y")
    assert buf.getvalue() == "\x1b[1mx\x1b[0m y\n"
    buf = io.StringIO()
    Console(buf).print("[bold]kept[/]", markup=False)
    assert buf.getvalue() == "[bold]kept[/]\n"
    buf = io.StringIO()
    Console(buf, width=80).print(_table())
    assert "┃ name" in buf.getvalue() and max(len(x) for x in buf.getvalue().splitlines()) <= 80
