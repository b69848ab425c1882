"""The main job's RNN part (``python -m fastconv --part rnn``; see :mod:`fastconv.demo`):

1. A character-level LSTM language model (:class:`fastconv.models.CharLM`) trained on fastconv and on
   torch.nn side by side — identical initial weights (built under one seed and checked equal), the same
   batches in the same order — on the text of Python's own help topics (``pydoc_data.topics``, which
   ships with every CPython: nothing is downloaded); then it writes a sample.
2. A CNN + LSTM captioner (:class:`fastconv.models.Captioner`) that learns to read numbers: images of
   2-4 of scikit-learn's 8x8 digits side by side, captioned with their digit words ("seven two nine"),
   trained with teacher forcing and decoded greedily; it prints a few test images' captions and the
   sequence accuracy (every word right) on unseen images.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as TF

from .models import Captioner, CharLM

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PAD, BOS, EOS = 10, 11, 12           # caption vocabulary: the ten digit words, then these
MAX_DIGITS = 4


# ------------------------------------------------------------------------------------------------
# character-level language model
# ------------------------------------------------------------------------------------------------
def load_text(chars: int) -> str:
    """The first ``chars`` characters of Python's help topics (the text behind ``help("assert")`` etc.)."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))[:chars]


@dataclass
class LMHistory:
    loss: list[float] = field(default_factory=list)      # mean training loss per round
    seconds: list[float] = field(default_factory=list)   # training time per round


def train_char_lm(models: dict, data: torch.Tensor, rounds: int, steps: int, batch: int, seq: int, lr: float,
                  seed: int, device: torch.device) -> dict[str, LMHistory]:
    """Train every model on the same random windows of ``data`` (token ids), Adam, next-character
    cross-entropy; ``rounds`` report lines of ``steps`` steps each."""
    # Adam's eps at 1e-4, not 1e-8: Adam divides each gradient component by its running RMS, so in
    # components whose gradient is almost zero the float32 rounding differences between two correct
    # implementations become steps of size ~lr, and the two runs part after ~50 steps (by 1e-2 in the
    # loss at 200 steps with eps=1e-8); a larger eps damps exactly those components and learns as well.
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=lr, eps=1e-4) for name, m in models.items()}
    history = {name: LMHistory() for name in models}
    order = torch.Generator().manual_seed(seed)
    for r in range(1, rounds + 1):
        totals = {name: 0.0 for name in models}
        seconds = {name: 0.0 for name in models}
        for _ in range(steps):
            starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=order)
            window = torch.stack([data[s:s + seq + 1] for s in starts.tolist()]).to(device)
            inputs, targets = window[:, :-1], window[:, 1:]
            for name, model in models.items():
                model.train()
                start = time.perf_counter()
                optimizers[name].zero_grad(set_to_none=True)
                logits, _ = model(inputs)
                loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizers[name].step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[name] += time.perf_counter() - start
                totals[name] += loss.item()
        cells = []
        for name in models:
            h = history[name]
            h.loss.append(totals[name] / steps)
            h.seconds.append(seconds[name])
            cells.append(f"{name:<8} loss {h.loss[-1]:.4f}  {h.seconds[-1]:5.2f} s")
        print(f"step {r * steps:>4}/{rounds * steps} | " + " | ".join(cells), flush=True)
    return history


# ------------------------------------------------------------------------------------------------
# captioner: numbers of 2-4 digits
# ------------------------------------------------------------------------------------------------
def make_numbers(images: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator):
    """``count`` images of 2-4 random digits from ``images`` (N, 1, 8, 8) side by side on an 8 x 32
    canvas (left-aligned, blank after), and their captions: the digit words, then EOS, padded with PAD."""
    canvas = torch.zeros(count, 1, 8, 8 * MAX_DIGITS)
    words = torch.full((count, MAX_DIGITS + 1), PAD, dtype=torch.int64)
    lengths = torch.randint(2, MAX_DIGITS + 1, (count,), generator=generator)
    picks = torch.randint(0, len(labels), (count, MAX_DIGITS), generator=generator)
    for i in range(count):
        n = int(lengths[i])
        for d in range(n):
            j = int(picks[i, d])
            canvas[i, :, :, 8 * d:8 * d + 8] = images[j].cpu()
            words[i, d] = labels[j]
        words[i, n] = EOS
    return canvas, words


def caption_text(words) -> str:
    out = []
    for w in words:
        if int(w) in (EOS, PAD):
            break
        out.append(WORDS[int(w)])
    return " ".join(out)


def sequence_accuracy(predicted: torch.Tensor, words: torch.Tensor) -> float:
    """Percentage of captions whose every word up to and including EOS is right."""
    ok = [(p[:int((w == EOS).nonzero()[0]) + 1] == w[:int((w == EOS).nonzero()[0]) + 1]).all().item()
          for p, w in zip(predicted.cpu(), words.cpu())]
    return 100.0 * sum(ok) / len(ok)


def train_captioner(model: Captioner, train_set, test_set, steps: int, batch: int, lr: float, seed: int,
                    device: torch.device, report: int) -> tuple[list[float], list[float]]:
    """Teacher forcing: the decoder reads BOS + the caption's words and predicts the words + EOS;
    returns the mean loss and the test sequence accuracy every ``report`` steps."""
    images, words = train_set
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    losses, accuracies, total = [], [], 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(words), (batch,), generator=order)
        x, w = images[idx].to(device), words[idx].to(device)
        inputs = torch.cat([torch.full_like(w[:, :1], BOS), w[:, :-1]], 1)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        logits = model(x, inputs)
        loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), w.reshape(-1), ignore_index=PAD)
        loss.backward()
        optimizer.step()
        total += loss.item()
        if step % report == 0:
            model.eval()
            predicted = model.greedy(test_set[0].to(device), BOS, EOS, MAX_DIGITS + 1)
            losses.append(total / report)
            accuracies.append(sequence_accuracy(predicted, test_set[1]))
            total = 0.0
            print(f"step {step:>4}/{steps} | loss {losses[-1]:.4f}  test sequence accuracy {accuracies[-1]:5.1f}%",
                  flush=True)
    return losses, accuracies


# ------------------------------------------------------------------------------------------------
# the part as a whole
# ------------------------------------------------------------------------------------------------
def run(args, device: torch.device, digits: tuple) -> dict:
    """Runs both models, prints their reports; returns what the figure shows and whether the two
    char-LMs agreed."""
    quick = args.quick
    text = load_text(60_000 if quick else 200_000)
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([index[ch] for ch in text], dtype=torch.int64)
    rounds, steps = (2, 5) if quick else (8, 25)
    batch, seq, hidden = 32, 64, 128 if quick else 256
    models = {}
    for name, backend in (("fastconv", "fastconv"), ("torch.nn", "torch")):
        torch.manual_seed(args.seed)
        models[name] = CharLM(len(vocab), hidden=hidden, num_layers=2, backend=backend).to(device)
    ours, ref = models["fastconv"].state_dict(), models["torch.nn"].state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ours), "initial weights differ"
    params = sum(p.numel() for p in models["fastconv"].parameters())
    print(f"\n-- RNN part: character-level LSTM language model --\n"
          f"text: Python's help topics (pydoc_data.topics), {len(text):,} characters, {len(vocab)} distinct\n"
          f"CharLM: embedding 32, 2 LSTM layers of {hidden}, {params:,} parameters, identical initial weights in "
          f"both; Adam lr 6e-3 (eps 1e-4), batch {batch} windows of {seq} characters\n")
    lm = train_char_lm(models, data, rounds, steps, batch, seq, 6e-3, args.seed, device)
    gap = abs(lm["fastconv"].loss[-1] - lm["torch.nn"].loss[-1])
    total = {name: sum(h.seconds) for name, h in lm.items()}
    print(f"final loss: fastconv {lm['fastconv'].loss[-1]:.4f}, torch.nn {lm['torch.nn'].loss[-1]:.4f}; training "
          f"time: fastconv {total['fastconv']:.2f} s, torch.nn {total['torch.nn']:.2f} s")
    prompt = "The \"while\" statement"
    prompt_ids = torch.tensor([index[c] for c in prompt], device=device)
    sample_ids = models["fastconv"].generate(prompt_ids, 40 if quick else 160,
                                             generator=torch.Generator().manual_seed(args.seed))
    sample = "".join(vocab[i] for i in sample_ids.tolist())
    print("sample from the fastconv model (temperature 0.8):\n  " + sample.replace("\n", "\n  "))

    x_train, y_train, x_test, y_test = digits
    gen = torch.Generator().manual_seed(args.seed)
    train_set = make_numbers(x_train, y_train, 2000 if quick else 6000, gen)
    test_set = make_numbers(x_test, y_test, 200 if quick else 500, gen)
    torch.manual_seed(args.seed)
    captioner = Captioner(13, image_size=(8, 8 * MAX_DIGITS)).to(device)
    cap_steps, report = (60, 30) if quick else (600, 100)
    print(f"\n-- RNN part: CNN + LSTM captioner --\nimages of 2-4 scikit-learn digits side by side (8x32), captioned "
          f"with their digit words; {len(train_set[1])} training and {len(test_set[1])} test images (test images "
          f"from the test digits only); Adam lr 3e-3, batch 64, {cap_steps} steps")
    cap_loss, cap_acc = train_captioner(captioner, train_set, test_set, cap_steps, 64, 3e-3, args.seed, device, report)
    captioner.eval()
    predicted = captioner.greedy(test_set[0][:8].to(device), BOS, EOS, MAX_DIGITS + 1).cpu()
    print("test images, true caption -> predicted:")
    for w, p in zip(test_set[1][:6], predicted[:6]):
        truth, guess = caption_text(w), caption_text(p)
        print(f"  {truth:<24} -> {guess:<24} {'ok' if truth == guess else 'WRONG'}")
    sys.stdout.flush()
    return {"lm": lm, "lm_report": steps, "lm_gap": gap, "sample": sample, "cap_loss": cap_loss, "cap_acc": cap_acc, "cap_report": report,
            "cap_images": test_set[0][:8], "cap_truth": test_set[1][:8], "cap_pred": predicted}
