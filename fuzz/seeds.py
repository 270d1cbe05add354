#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets that come straight from fixtures/ into
fuzz/seeds/<target>/ (deterministic; run from anywhere). The seeds that need a card or a key
(host_session, assertion) are written by `cargo run --example make_seeds` in fuzz/.

Frames (see fuzz/src/lib.rs): a two-byte big-endian length, then that many bytes."""

import hashlib
import pathlib
import re
import ssl

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SEEDS = ROOT / "fuzz" / "seeds"


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def write(target: str, data: bytes) -> None:
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def hex_line(text: str) -> bytes:
    """A transcript line's hex; `..` reads as 00 and `*` as nothing."""
    text = text.split("#", 1)[0].replace("*", " ").replace("..", "00")
    return bytes.fromhex("".join(text.split()))


CARD_FLAGS = {"blank": 0, "fixtures/cards/alice.toml": 1, "fixtures/cards/bob.toml": 2}


def transcripts():
    """Sections of the transcripts: (card flags, [commands or None for a reset], [responses])."""
    for path in sorted((FIXTURES / "transcripts").glob("*.apdu")):
        section = None
        for line in path.read_text().splitlines():
            if line.startswith("@card"):
                if section:
                    yield section
                section = {"flags": CARD_FLAGS[line.split()[1]], "commands": [], "responses": [],
                           "management": False}
            elif section is None:
                continue
            elif line.startswith("@options"):
                if "no-extended" in line:
                    section["flags"] |= 0x08
                if "contactless" in line:
                    section["flags"] |= 0x04
            elif line.startswith(">"):
                section["commands"].append(hex_line(line[1:]))
            elif line.startswith("<"):
                section["responses"].append(hex_line(line[1:]))
            elif line.startswith("! reset"):
                section["commands"].append(None)
            elif line.startswith("! management-key"):
                section["management"] = True
        if section:
            yield section


def main() -> None:
    sections = list(transcripts())
    for section in sections:
        for command in section["commands"]:
            if command is None:
                continue
            write("apdu_command", command)
            if len(command) > 5:
                write("tlv", command[5:])
                write("piv_objects", command[5:])
        for response in section["responses"]:
            write("apdu_response", response)
            if len(response) > 2:
                write("tlv", response[:-2])
                write("piv_objects", response[:-2])
        script = b"".join(frame(c if c is not None else b"") for c in section["commands"])
        write("virtual_card", bytes([section["flags"]]) + script)
        if section["management"]:
            write("virtual_card", bytes([section["flags"] | 0x30]) + script)
        # The responses as a card's script for the host (extended and short links).
        answers = b"".join(frame(r) for r in section["responses"])
        write("host_session", b"\x01" + answers)
        write("host_session", b"\x00" + answers)
    for pem in sorted((FIXTURES / "certs").glob("*.pem")) + sorted((FIXTURES / "ca").glob("*.pem")):
        text = pem.read_text()
        der = ssl.PEM_cert_to_DER_cert(text)
        write("certificate", der)
        write("certificate", text.encode())
        write("tlv", der)
    ca = ssl.PEM_cert_to_DER_cert((FIXTURES / "ca" / "test-ca.pem").read_text())
    for pem in sorted((FIXTURES / "certs").glob("*.pem")):
        write("certificate", frame(ssl.PEM_cert_to_DER_cert(pem.read_text())) + frame(ca))
    for card in sorted((FIXTURES / "cards").glob("*.toml")):
        write("card_image", card.read_bytes())
    for name, source in [("server_config", ROOT / "server/src/config.rs"),
                         ("kiosk_config", ROOT / "kiosk/src/config.rs")]:
        # The documented example at the top of the module, comments and all.
        lines = source.read_text().splitlines()
        start = lines.index("//! ```toml") + 1
        end = lines.index("//! ```", start)
        example = "\n".join(line[4:] for line in lines[start:end]) + "\n"
        write(name, example.encode())
        # The smallest accepted file: the required keys only.
        minimal = "\n".join(l for l in example.splitlines()
                            if "required" in l or l.startswith("[")) + "\n"
        write(name, re.sub(r" +#.*", "", minimal).encode())


if __name__ == "__main__":
    main()
