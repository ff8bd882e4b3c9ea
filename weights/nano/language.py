"""The language side: a Vicuna stand-in pretrained on the world's text, then NExT-GPT's three
stages on top of it, exactly on the release's modules (LoRA Llama, `llama_proj`, the three
`nn.Transformer` output projections) and prompt code (`models.prompt`):

1. `align_input`: encoder-side alignment. Captioning of images, sounds and videos; only the
   input projection learns (the LLM is frozen).
2. `align_output`: decoder-side alignment. "Show me / play / animate" turns whose answer ends
   with signal tokens; the output projections learn to map the hidden states at those tokens to
   each decoder's text-encoder conditioning of the caption (MSE), and the embedding and LM-head
   rows learn to emit the signal tokens (the LLM body stays frozen).
3. `instruct`: LoRA instruction tuning on whole conversations (questions about media,
   generation, follow-ups), the projections still trained on the same MSE.

The media they talk about reach the LLM as ImageBind embeddings from `bank` (made once per
encoder), a share of them composed of seen combinations' embeddings (`bank.with_composed`),
and in `instruct` some single questions asked of the unseen corners' compositions.

Each stage ends in `state.safetensors` under the release's key names (`release_targets`), which
the next stage loads with the release loader and `assemble` writes out as fp16.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from models.checkpoint import load_release_checkpoint, release_targets
from models.llm import LanguageModel, LoraSettings
from models.nextgpt import build_projections
from models.prompt import Turn as PromptTurn
from models.prompt import build_segments, splice_embeddings
from models.signals import MODALITIES

from . import config, dialogue, world
from .analogy import SignalMemory, analogy_loss
from .bank import Bank, BankDialogues, build_bank, with_composed
from .common import EMA, Context, train_loop
from .decoders import caption_conditioning
from .dialogue import Conversation, Dialogues

STATE = "state.safetensors"


# ----------------------------------------------------------------------------------- the Vicuna stand-in

def stage_llm(ctx: Context) -> dict:
    """Pretrain the base LLM on text-only conversations of the world (media written as captions).

    The text covers every colour/shape and pitch/timbre combination, the held-out ones too: Vicuna
    knows "a green triangle" is a phrase long before NExT-GPT shows it an image of one. Text that
    never put "green" before "triangle" would teach the LLM that the phrase cannot occur, and an
    answer about a held-out image would bend to a seen pair whatever the image embedding says.
    What stays held out is their media: no stage makes or embeds an image, sound or video of one."""
    stage = "llm"
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    tok = AutoTokenizer.from_pretrained(str(ctx.work / "tokenizers" / "llama"))
    vocab = tok.convert_tokens_to_ids("<Img>")  # the base vocabulary ends where NExT-GPT's tokens begin
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, bos_token_id=1, eos_token_id=2, **config.LLAMA)).train()
    dialogues = Dialogues(held_out=None)
    n = ctx.batch(stage)

    def step(i):
        texts = [dialogue.conversation_text(dialogues.conversation(rng), with_signals=False) for _ in range(n)]
        ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, ids))
        x = torch.full((n, width), 0, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for k, row in enumerate(ids):
            x[k, :len(row)] = torch.tensor(row)
            mask[k, :len(row)] = 1
        labels = x.masked_fill(mask == 0, -100)
        return {"loss": model(input_ids=x, attention_mask=mask, labels=labels).loss}

    info = train_loop(stage, ctx, model.parameters(), step, lr=2e-3, weight_decay=0.01, modules={"model": model}, rng=rng)
    model.eval().save_pretrained(str(ctx.dir(stage)))
    return info


# The weight of `analogy.analogy_loss` in `align_output` and `instruct`: the output projection fed
# h_a + h_b - h_c of seen requests that make a parallelogram with a fourth combination d, against
# d's target if d was seen and t_a + t_b - t_c if not, so that it maps sums of signal states as it
# maps states and is affine over the lattice they span. Session 21 (seen corners only): held-out
# sound answers and played pitch from below 90% to 94% and 100%, with composed tones. Session 34
# (every corner): held-out draws land on their own captions even as LoRA moves the states 13-19%
# off their sums (docs/nano-history.md).
ANALOGY = 1.0

# The noise added to each media embedding the language stages read, as a share of the embedding's
# norm (0.25: cosine about 0.97 to the clean one): the LLM learns to read a region around each bank
# sample rather than its exact point, and a held-out pair's embedding lies off the seen ones'. Over
# four draws of the three stages, each against the same draw without it (the same conversations),
# 53 held-out misses in the eval against 78 (docs/nano-history.md, sessions 30-32).
MEDIA_NOISE = 0.25

# `instruct` writes out an exponential moving average of its weights, not its last step's (decay
# per step from the first, no warm-up: about the last thousand of its 2500 steps). How the LLM
# reads or lands a held-out pair wanders as LoRA trains (session 33: one draw missed 25, 1, 17 and
# 10 held-out samples at steps 625, 1250, 1875 and 2500); the average sits inside that walk rather
# than wherever it ends. Over four paired draws 24 misses against 31 (docs/nano-history.md).
INSTRUCT_EMA = 0.999


def jittered(embedding: torch.Tensor, share: float) -> torch.Tensor:
    """`embedding` (D,) plus isotropic Gaussian noise whose norm is about `share` of its own.
    Drawn from torch's stream, so the conversations (drawn from `random`) do not move."""
    return embedding + share * embedding.norm() / embedding.numel() ** 0.5 * torch.randn_like(embedding)


# ----------------------------------------------------------------------------------- the model under training

def load_language(ctx: Context, state_from: str | None) -> tuple[LanguageModel, torch.nn.ModuleDict]:
    cfg = config.nano_config()
    tok = AutoTokenizer.from_pretrained(str(ctx.work / "tokenizers" / "llama"))
    base = LlamaForCausalLM.from_pretrained(str(ctx.work / "llm"), dtype=torch.float32)
    lora = LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout)
    llm = LanguageModel.from_base(tok, base, cfg.media_dim, lora)
    torch.manual_seed(0)
    projections = build_projections(cfg, base.config.hidden_size)
    if state_from is not None:
        load_release_checkpoint(ctx.work / state_from / STATE, llm, dict(projections))
    return llm, projections


def save_language(ctx: Context, stage: str, llm: LanguageModel, projections) -> None:
    state = release_targets(llm, dict(projections))
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(ctx.dir(stage) / STATE))


class Targets:
    """Each decoder's text-encoder conditioning of a caption: what the output projections imitate."""

    def __init__(self, ctx: Context):
        from diffusers import AudioLDMPipeline, StableDiffusionPipeline, TextToVideoSDPipeline

        w = ctx.work
        dirs = config.DECODER_STAGE_DIRS
        self.pipes = {
            "image": StableDiffusionPipeline.from_pretrained(str(w / dirs["image"]), safety_checker=None,
                                                             requires_safety_checker=False),
            "video": TextToVideoSDPipeline.from_pretrained(str(w / dirs["video"])),
            "audio": AudioLDMPipeline.from_pretrained(str(w / dirs["audio"])),
        }
        for pipe in self.pipes.values():
            pipe.text_encoder.eval()
        self.cache: dict[tuple[str, str], torch.Tensor] = {}
        self.scale: dict[str, float] = {}

    @torch.no_grad()
    def __call__(self, modality: str, caption: str) -> torch.Tensor:
        key = (modality, caption)
        if key not in self.cache:
            cond = caption_conditioning(modality, self.pipes[modality], [caption])
            self.cache[key] = (cond if modality == "audio" else cond[0]).detach()  # audio (1, D), else (77, D)
        return self.cache[key]

    def norm(self, modality: str, target: torch.Tensor) -> float:
        """Mean square of a modality's targets, so the three MSE terms weigh alike."""
        if modality not in self.scale:
            self.scale[modality] = float(target.pow(2).mean())
        return self.scale[modality]


@dataclass
class Example:
    embeds: torch.Tensor  # (T, H)
    labels: list[int]  # -100 on the prompt
    gen: tuple[str, str, int] | None  # modality, caption, index of the first signal token in the sequence


class Batcher:
    """Conversations -> padded LLM inputs, through the release's prompt layout and splice."""

    def __init__(self, llm: LanguageModel, bank: Bank, bos_per_segment: bool = True, media_noise: float = MEDIA_NOISE):
        self.llm = llm
        self.bank = bank
        self.bos_per_segment = bos_per_segment
        self.media_noise = media_noise
        self.tokenize = functools.lru_cache(maxsize=50000)(lambda s: tuple(llm.tokenize(s)))

    def example(self, conv: Conversation) -> Example:
        turns = []
        for t in conv[:-1]:
            media = {m: [self.llm.project_media(jittered(self.bank.embedding(m, s), self.media_noise))]
                     for m, s in t.media.items()}
            turns.append(PromptTurn(t.role, t.text, media))
        last = conv[-1]
        segments = build_segments(turns)
        prompt, _ = splice_embeddings(segments, lambda s: list(self.tokenize(s)), self.llm.embed_ids,
                                      self.llm.tokenizer.bos_token_id, self.bos_per_segment)
        text = last.text + (dialogue.signal_text(last.gen[0]) if last.gen else "") + "\n###"
        answer = list(self.tokenize(text))
        ans_emb = self.llm.embed_ids(torch.tensor([answer]))
        embeds = torch.cat([prompt, ans_emb], dim=1)[0]
        labels = [-100] * prompt.shape[1] + answer
        gen = None
        if last.gen:
            first = self.llm.signal_ids[last.gen[0]][0]
            gen = (last.gen[0], last.gen[1], prompt.shape[1] + answer.index(first))
        return Example(embeds, labels, gen)

    def forward(self, examples: list[Example]):
        """-> (LM loss, last-layer post-norm hidden states (B, T, H))."""
        n, width = len(examples), max(e.embeds.shape[0] for e in examples)
        hidden_size = examples[0].embeds.shape[1]
        x = torch.zeros(n, width, hidden_size)
        mask = torch.zeros(n, width, dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        rows = []
        for k, e in enumerate(examples):
            t = e.embeds.shape[0]
            rows.append(F.pad(e.embeds, (0, 0, 0, width - t)))
            mask[k, :t] = 1
            labels[k, :t] = torch.tensor(e.labels)
        x = torch.stack(rows)
        lm = self.llm.lm
        hidden = lm.model(inputs_embeds=x, attention_mask=mask).last_hidden_state  # after the final RMSNorm
        logits = lm.lm_head(hidden)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return loss, hidden


def projection_loss(batcher: Batcher, projections, targets: Targets, examples: list[Example],
                    hidden: torch.Tensor) -> torch.Tensor:
    """MSE of each output projection against its decoder's conditioning of the caption."""
    losses = []
    for m in MODALITIES:
        picked = [(k, e) for k, e in enumerate(examples) if e.gen and e.gen[0] == m]
        if not picked:
            continue
        ids = batcher.llm.signal_ids[m]
        h = torch.stack([hidden[k, e.gen[2]:e.gen[2] + len(ids)] for k, e in picked])  # (b, N, H)
        sig = batcher.llm.embed_ids(torch.tensor([ids])).expand(len(picked), -1, -1)
        out = projections[m](h, sig)  # (b, Q, D)
        tgt = torch.stack([targets(m, e.gen[1]) for _, e in picked])  # (b, Q, D)
        losses.append(F.mse_loss(out, tgt) / targets.norm(m, tgt) * len(picked))
    if not losses:
        return torch.zeros(())
    return sum(losses) / sum(1 for e in examples if e.gen)


def _freeze_all(llm: LanguageModel, projections) -> None:
    for p in list(llm.parameters()) + list(projections.parameters()):
        p.requires_grad_(False)


def _lm_rows(llm: LanguageModel) -> list[torch.nn.Parameter]:
    lm = llm.lm
    return [lm.model.embed_tokens.weight, lm.lm_head.weight]


# ----------------------------------------------------------------------------------- the three stages

def describe(rng: random.Random, d: BankDialogues) -> Conversation:
    """Stage 1's captioning turn: a media item, a describe question, the full caption."""
    kind = rng.choice(("image", "audio", "video"))
    if kind == "image":
        s = d.shape(rng)
        return [dialogue.Turn("user", rng.choice(dialogue.DESCRIBE_IMAGE), {"image": s}),
                dialogue.Turn("assistant", world.article(f"A {s.colour} {s.shape}."))]
    if kind == "audio":
        t = d.tone(rng)
        return [dialogue.Turn("user", rng.choice(dialogue.DESCRIBE_AUDIO), {"audio": t}),
                dialogue.Turn("assistant", f"A {t.pitch} {t.timbre} tone.")]
    v = d.video(rng)
    return [dialogue.Turn("user", rng.choice(dialogue.DESCRIBE_VIDEO), {"video": v}),
            dialogue.Turn("assistant", world.article(f"A {v.colour} {v.shape} moving {v.direction}."))]


def stage_align_input(ctx: Context) -> dict:
    stage = "align_input"
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    bank, composed = with_composed(build_bank(ctx))
    llm, projections = load_language(ctx, None)
    _freeze_all(llm, projections)
    llm.llama_proj.requires_grad_(True)
    llm.train()
    batcher, d, n = Batcher(llm, bank), BankDialogues(bank, composed), ctx.batch(stage)

    def step(i):
        loss, _ = batcher.forward([batcher.example(describe(rng, d)) for _ in range(n)])
        return {"loss": loss}

    info = train_loop(stage, ctx, llm.llama_proj.parameters(), step, lr=2e-3,
                      modules={"llm": llm, "projections": projections}, rng=rng)
    save_language(ctx, stage, llm, projections)
    return info


def generation(rng: random.Random, d: Dialogues) -> Conversation:
    return d.single(rng, rng.choice(("draw", "play", "animate")))


def analogy_term(memory: SignalMemory, llm, projections, targets: Targets, examples, hidden) -> torch.Tensor:
    """`analogy.analogy_loss` after this step's signal states (B, T, H) join the memory of seen
    requests (one state per caption, the latest)."""
    for k, e in enumerate(examples):
        if e.gen:
            memory.add(e.gen[0], e.gen[1], hidden[k, e.gen[2]:e.gen[2] + len(llm.signal_ids[e.gen[0]])])
    embeds = {m: llm.embed_ids(torch.tensor([llm.signal_ids[m]])).detach() for m in MODALITIES}
    return analogy_loss(memory, projections, embeds, targets)


def _tune(ctx: Context, stage: str, state_from: str, groups_of, conversation, lr: float,
          ema_decay: float | None = None) -> dict:
    """Train the parameter groups `groups_of(llm, projections)` on `conversation(rng, dialogues)`
    with the LM loss on the last answer plus the output projections' MSE; with `ema_decay`, save
    the moving average of the weights instead of the last step's."""
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    bank, composed = with_composed(build_bank(ctx))
    llm, projections = load_language(ctx, state_from)
    _freeze_all(llm, projections)
    groups = groups_of(llm, projections)
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    llm.train()
    projections.train()
    targets = Targets(ctx)
    batcher, d, n = Batcher(llm, bank), BankDialogues(bank, composed), ctx.batch(stage)
    memory = SignalMemory(ctx.seed)

    def step(i):
        examples = [batcher.example(conversation(rng, d)) for _ in range(n)]
        lm_loss, hidden = batcher.forward(examples)
        mse = projection_loss(batcher, projections, targets, examples, hidden)
        analogy = analogy_term(memory, llm, projections, targets, examples, hidden)
        return {"loss": lm_loss + mse + ANALOGY * analogy, "lm": lm_loss.detach(), "mse": mse.detach(),
                "analogy": analogy.detach()}

    averages = [EMA(llm, ema_decay, warmup=False), EMA(projections, ema_decay, warmup=False)] if ema_decay else None
    info = train_loop(stage, ctx, None, step, lr=lr, param_groups=groups,
                      modules={"llm": llm, "projections": projections}, rng=rng, ema=averages)
    for average in averages or []:
        average.copy_to(average.module)
    save_language(ctx, stage, llm, projections)
    return info


def stage_align_output(ctx: Context) -> dict:
    """The output projections and the embedding/LM-head rows; the LLM body stays frozen."""
    def groups(llm, projections):
        return [{"params": list(projections.parameters()), "lr_scale": 1.0}, {"params": _lm_rows(llm), "lr_scale": 0.5}]

    return _tune(ctx, "align_output", "align_input", groups, generation, lr=1e-3)


def stage_instruct(ctx: Context) -> dict:
    """LoRA, the input and output projections and the embedding/LM-head rows, on whole conversations."""
    def groups(llm, projections):
        lora = [p for name, p in llm.llama_model.named_parameters() if "lora_" in name]
        return [{"params": lora, "lr_scale": 1.0},
                {"params": list(llm.llama_proj.parameters()) + list(projections.parameters()), "lr_scale": 0.5},
                {"params": _lm_rows(llm), "lr_scale": 0.3}]

    return _tune(ctx, "instruct", "align_output", groups, lambda rng, d: d.conversation(rng), lr=2e-3,
                 ema_decay=INSTRUCT_EMA)
