"""Chunking memory is bounded by a window, not by the document: a long single-line text with no
sentence break (and one with no whitespace at all) is chunked in a child process, whose peak RSS
must stay under 1 GiB, text, tokenizer and interpreter included.

Sized for about 30 s on 2 cores (about 65 s at a load average of 11): 20 MiB of words on one
line (a 50 MiB `max_file_bytes` file at 40%; at 50 MiB the peak measured 744 MiB) and 4 MiB
without any whitespace (cut by tokens). Before the chunker read text a window at a time, one
8 MiB line peaked at about 3.2 GiB.
"""

import json
import subprocess
import sys
import textwrap

from conftest import REPO

LIMIT_MIB = 1024
WORDS_MIB = 20
NO_SPACE_MIB = 4

CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from conftest import make_config
    from bonito_tasks.chunk import Chunker, load_tokenizer

    def rss_mib():
        # This process's own peak (VmHWM): getrusage's ru_maxrss also carries the peak of the
        # process that forked it (a large pytest) across exec.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB

    words_mib, no_space_mib = int(sys.argv[2]), int(sys.argv[3])
    config = make_config(Path(sys.argv[4]))
    chunker = Chunker(load_tokenizer(config), config.chunk_max_tokens)
    def words_line(size):  # one line of words, no sentence end
        vocabulary = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
        words = [f"{w}{i % 97}" for i, w in enumerate(vocabulary * 9001)]
        unit = " ".join(words) + " "
        return (unit * (size // len(unit) + 1))[:size]

    def no_space(size):
        unit = "".join(chr(97 + i * 7919 % 26) for i in range(100_003))
        return (unit * (size // len(unit) + 1))[:size]

    report = {"before_mib": rss_mib()}  # interpreter and tokenizer
    for name, make, mib in (("words", words_line, words_mib), ("no_space", no_space, no_space_mib)):
        doc = make(mib * 2**20)
        spans = chunker.split_counted(doc)
        assert spans[0][0] == 0 and spans[-1][1] == len(doc.rstrip()), name
        assert max(n for _, _, n in spans) <= config.chunk_max_tokens, name
        report[name] = {"chars": len(doc), "chunks": len(spans)}
        doc = spans = None
    report["peak_mib"] = rss_mib()
    print(json.dumps(report))
""")


def test_long_single_line_chunks_in_bounded_memory(tmp_path):
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(WORDS_MIB), str(NO_SPACE_MIB), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["words"]["chunks"] > 1000 and report["no_space"]["chunks"] > 100
    # The whole budget: interpreter, tokenizer (AutoTokenizer imports torch), the text, the chunker.
    assert report["peak_mib"] < LIMIT_MIB, report
    # What chunking adds to the tokenizer is the text and a window's worth, not a multiple of the text.
    assert report["peak_mib"] - report["before_mib"] < WORDS_MIB + 128, report
