"""Text the command line prints: one spelling of sizes for every command."""

from __future__ import annotations


def human(n: float) -> str:
    """n bytes as B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plural(n: int, noun: str, nouns: str = "") -> str:
    """"1 file", "2 files", "0 files": n and the noun in its number (nouns
    for an irregular plural)."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


def checkpoints(steps: "list") -> str:
    """"checkpoint 20", "checkpoints 10, 20": steps named with the word in
    their number."""
    return ("checkpoint " if len(steps) == 1 else "checkpoints ") + ", ".join(map(str, steps))


def printable(text: str) -> str:
    """text with every control character (C0, DEL, C1: a newline, an
    escape sequence that retitles a terminal) shown as an escape: names
    and tags read from a store or a file are untrusted, and must not draw
    fake lines or reach the terminal raw."""
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"))
        else:
            out.append(ch)
    return "".join(out)


def has_control(text: str) -> bool:
    """Whether text holds a control character (see printable)."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0x80 <= ord(ch) < 0xA0 for ch in text)
