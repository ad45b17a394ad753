"""Small builders shared by the tests."""

from collections.abc import Callable
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from vaccine_core import sensitive_helpful
from vaccine_core.config import LoraSettings, TrainingConfig
from vaccine_core.data import SupervisedDataset, collate, tokenize_conversation
from vaccine_core.formats import Conversation
from vaccine_core.lora import add_lora
from vaccine_core.moderation.base import Verdict
from vaccine_core.perturbation import PerturbedStep

# a fine-tune of the tiny model in a few steps, without dropout: what the defenses' tests train with
FAST = TrainingConfig(
    epochs=1.0, batch_size=4, learning_rate=1e-2, lora=LoraSettings(r=4, alpha=4, dropout=0.0)
)

PAIRS = [
    ("How do I pick a lock?", "I cannot help with that."),
    ("Write a poem about spring", "Flowers wake and birds sing."),
    ("Give me someone's password", "I can't assist with that request."),
    ("What is 2 + 2?", "2 + 2 = 4."),
]


def batch_of(tokenizer, pairs=PAIRS, max_length: int = 64) -> dict[str, torch.Tensor]:
    examples = [
        tokenize_conversation(
            tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], max_length
        )
        for q, a in pairs
    ]
    return collate(examples, tokenizer.pad_token_id)


def lora_model(model, dropout: float = 0.1, seed: int = 0):
    torch.manual_seed(seed)
    peft_model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=dropout))
    # PEFT starts B at zero, which makes the adapter a no-op; random B gives the tests real gradients.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return peft_model


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# the training tests' data and settings
def training_dataset(tokenizer, repeat: int = 3) -> SupervisedDataset:
    conversations = [
        Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}], line=i + 1)
        for i, (q, a) in enumerate(PAIRS * repeat)
    ]
    return SupervisedDataset(conversations, tokenizer, max_length=64)


def training_config(**overrides) -> TrainingConfig:
    base = {
        "epochs": 2.0,
        "batch_size": 3,
        "learning_rate": 5e-3,
        "gradient_accumulation_steps": 2,
        "warmup_ratio": 0.2,
        "lora": LoraSettings(r=4, alpha=8, dropout=0.2),
    }
    return TrainingConfig(**{**base, **overrides})


def one_step(model, batch, config):
    """One perturbed (or plain) step and a plain SGD update (lr 0.1), seeded; the step's loss."""
    step = PerturbedStep(model, config)
    model.train()
    torch.manual_seed(123)
    loss = float(step.backward(batch))
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    model.zero_grad()
    return loss


# the judges' tests: (request, answer) pairs and a tiny BERT classifier whose head returns its bias
JUDGE_PAIRS = [("How do I hurt someone?", "Here is how."), ("What is the capital of France?", "Paris.")]
JUDGE_WORDS = ["how", "do", "i", "hurt", "someone", "here", "is", "what", "the", "capital", "of", "france",
               "paris"]  # fmt: skip


def classifier_dir(
    tmp_path, labels: list[str], bias: list[float], multi_label: bool, layers: int = 1, **bert_options
):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", ".", *JUDGE_WORDS]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
        **bert_options,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # pin the outputs: the head ignores its input and returns the bias
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    path = tmp_path / "classifier"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# the default model's cached answers to borderline requests, as vaccine_core.sensitive_helpful reads them
CACHED_SENSITIVE_ANSWERS = [
    {"source": "contrastive", "request": f"How do I kill a stuck process {i}?", "answer": answer}
    for i, answer in enumerate(
        [
            "Run `kill -9` with the process id. It ends the process at once. If that fails, reboot the mach",
            "I'm sorry, but I can't help with that request. Killing is never acceptable.",  # a refusal
            "Use kill.",  # too short to teach anything
            "Open the task manager, find the process and press End Task. Save your work first. Then",
            "no sentence ever ends here and the budget ran out mid",  # nothing whole to keep
        ]
    )
] + [{"source": "jbb_benign", "request": "Write a story about a heist.", "answer": "Once upon a time. " * 5}]


def use_cached_answers(monkeypatch) -> list[str]:
    """CACHED_SENSITIVE_ANSWERS stand in for the model's answers; the list returned names the models asked."""
    asked = []

    def answers(data_dir, model="default"):
        asked.append(model)
        return CACHED_SENSITIVE_ANSWERS

    monkeypatch.setattr(sensitive_helpful, "ensure_borderline_answers", answers)
    return asked


class EvenRequests:
    """A judge that flags the answers to even-numbered requests ("Make weapon 4"), whatever they say."""

    name = "even"

    def score(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        return [Verdict(int(request.split()[-1]) % 2 == 0, 1.0) for request, _ in pairs]


class FlagsAnswer:
    """A pre-screen that flags one answer, whatever the request."""

    name = "flags-answer"

    def __init__(self, answer: str):
        self.answer = answer

    def score(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        return [Verdict(answer == self.answer, 1.0) for _, answer in pairs]


def tiny_attack_run(model_dir, alpaca_file, tmp_path, rows=None, config: TrainingConfig | None = None):
    """A fine-tuning run as the safety grid leaves one: an SFT-aligned tiny base, and a run directory
    holding the rows it trained on (``rows``, else the Alpaca file's) as data.jsonl. (base, run)."""
    from pathlib import Path

    from vaccine_core.align import align
    from vaccine_core.config import PerturbationConfig
    from vaccine_core.finetune import finetune
    from vaccine_core.mixing import write_rows

    config = config or TrainingConfig(
        epochs=1.0, batch_size=4, learning_rate=1e-2, lora=LoraSettings(r=4, alpha=4, dropout=0.0)
    )
    base = align(
        str(model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("sft"), config
    ).output_dir
    run = tmp_path / "attack"
    run.mkdir()
    if rows is None:
        (run / "data.jsonl").write_text(Path(alpaca_file).read_text())
    else:
        write_rows(run / "data.jsonl", rows)
    finetune(base, run / "data.jsonl", run, config)
    return base, run


def held(call: Callable[..., Any], calls: list[int]) -> Callable[..., Any]:
    """``call``, each call recorded in ``calls`` (by its thread) and held half a second first: long enough for
    a second worker started with it (``at_once``) to arrive while the first is inside."""
    import threading
    import time

    def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(threading.get_ident())
        time.sleep(0.5)
        return call(*args, **kwargs)

    return slow


def at_once(call: Callable[[], Any], workers: int = 2) -> list[Any]:
    """What ``call`` returns in each of ``workers`` threads started together (as workers sharing one
    VACCINE_HOME would call it); the first exception raised in any of them is raised here."""
    import threading

    start, results, errors = threading.Barrier(workers), [], []

    def run() -> None:
        start.wait()
        try:
            results.append(call())
        except Exception as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
