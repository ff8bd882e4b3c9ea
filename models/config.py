"""`nextgpt.json`: what a model directory holds and how its parts fit together."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

CONFIG_FILE = "nextgpt.json"


class ProjectionSpec(BaseModel):
    out_dim: int  # the decoder's conditioning width
    num_queries: int  # 77 for CLIP-conditioned decoders, 1 for AudioLDM
    d_model: int = 512
    nhead: int = 4
    num_layers: int = 4
    dim_feedforward: int = 2048


class LoraSpec(BaseModel):
    r: int = 32
    alpha: int = 32
    dropout: float = 0.1


class Components(BaseModel):
    """Sub-directories (relative to the model directory) of each separately loadable stage."""

    encoder: str = "imagebind"
    llm: str = "llm"  # the Vicuna base, in transformers' layout
    nextgpt: str = "nextgpt"  # the release's tokenizer files and converted checkpoint
    image: str = "image_decoder"  # Stable Diffusion, diffusers layout
    audio: str = "audio_decoder"  # AudioLDM
    video: str = "video_decoder"  # Zeroscope (TextToVideoSD)


class ModelConfig(BaseModel):
    name: str
    media_dim: int = 1024  # ImageBind's output width (1024 for ImageBind-huge)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    projections: dict[str, ProjectionSpec]
    # The legacy reference gives every text segment its own BOS; the weights were trained so.
    bos_per_text_segment: bool = True
    # Per-decoder default parameters (the decoders' own dataclass defaults fill the rest).
    decoder_defaults: dict[str, dict] = Field(default_factory=dict)
    components: Components = Field(default_factory=Components)

    @classmethod
    def load(cls, model_dir: Path) -> "ModelConfig":
        path = Path(model_dir) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a NExT-GPT model directory: {CONFIG_FILE} missing")
        return cls.model_validate_json(path.read_text())

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / CONFIG_FILE).write_text(self.model_dump_json(indent=2))


RELEASE_PROJECTIONS = {
    "image": ProjectionSpec(out_dim=768, num_queries=77),
    "video": ProjectionSpec(out_dim=1024, num_queries=77),
    "audio": ProjectionSpec(out_dim=512, num_queries=1),
}
