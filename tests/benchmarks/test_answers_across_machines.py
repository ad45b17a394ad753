"""The cross-machine check counts, per decoding, the answers that are the same text."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from answers_across_machines import same_text_share


def test_the_same_text_share_counts_every_answer_of_every_prompt_set():
    def outputs(first_harmful_answer: str) -> dict:
        return {
            "answers": {
                "harmful": {"greedy": [[first_harmful_answer], ["b"]], "sampled": [["c", "d"], ["e", "f"]]},
                "harmless": {"greedy": [["g"], ["h"]], "sampled": [["i", "j"], ["k", "l"]]},
            }
        }

    assert same_text_share(outputs("a"), outputs("a")) == {"greedy": 100.0, "sampled": 100.0}
    assert same_text_share(outputs("a"), outputs("z")) == {"greedy": 75.0, "sampled": 100.0}
