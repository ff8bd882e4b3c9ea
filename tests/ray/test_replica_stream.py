"""Inside a replica, without a cluster: cancelling the task that reads a stage's stream (what
Serve does when the caller cancels its DeploymentResponse) stops the model mid-call."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from models.generate import SamplingParams
from models.types import Message
from server.cli import build_parser, settings_from_args
from server.ray_serve.replicas import stream_from_thread
from server.stages import Turn, decode_stage

STEPS = 100


def test_cancelling_the_reader_stops_the_decoder(tiny_model):
    condition = tiny_model.language([Message("user", "Draw")], required=["image"],
                                    sampling=SamplingParams(4, seed=0)).conditions["image"]
    params = tiny_model.decoder_params("image", {"num_inference_steps": STEPS, "height": 32, "width": 32})
    turn = Turn([], {"text", "image"}, {"image"}, SamplingParams(seed=0), {"image": params})
    steps: list[int] = []

    def work(emit, should_stop):
        def on_step(step: int, total: int) -> None:
            steps.append(step)
            emit(("progress", step, total))

        return decode_stage(tiny_model, turn, "image", condition, on_step, should_stop)

    async def scenario() -> tuple:
        executor = ThreadPoolExecutor(1)
        first = asyncio.get_running_loop().create_future()

        async def read() -> None:
            async for item in stream_from_thread(executor, work):
                if not first.done():
                    first.set_result(item)

        reader = asyncio.create_task(read())
        item = await asyncio.wait_for(first, 60)
        reader.cancel()  # Serve cancels the replica's task
        await asyncio.gather(reader, return_exceptions=True)
        await asyncio.to_thread(executor.shutdown, True)  # returns once the decoder call has ended
        return item

    first = asyncio.run(scenario())
    assert first[0] == "progress"
    assert len(steps) < STEPS  # it stopped at a step, it did not draw to the end


def test_serve_ray_flags():
    args = build_parser().parse_args(["serve", "--ray-address", "head:6379", "--weights", "tiny"])
    assert settings_from_args(args).ray.address == "head:6379"
    assert build_parser().parse_args(["serve", "--ray"]).ray is True
