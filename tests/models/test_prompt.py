import torch

from models.prompt import Turn, build_segments, render_text, splice_embeddings

H = 8


def emb(value=1.0):
    return torch.full((H,), value)


def test_single_turn_text_matches_release_template():
    segments = build_segments([Turn("user", "Hello there")])
    assert render_text(segments) == "### Human: Hello there\n### Assistant:"


def test_media_tags_come_before_text_in_release_order():
    turn = Turn("user", "What is this?", {"video": [emb()], "image": [emb()], "audio": [emb()]})
    segments = build_segments([turn])
    assert [getattr(s, "modality", s) for s in segments] == [
        "### Human:", "image", "audio", "video", "What is this?\n### Assistant:"]


def test_multi_turn_with_media_in_a_later_turn():
    turns = [Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "Describe it", {"image": [emb()]})]
    text = render_text(build_segments(turns))
    assert text == "### Human: Hi\n### Assistant: Hello!\n### Human: <Image>…</Image> Describe it\n### Assistant:"


def test_several_items_of_one_modality_share_one_tag_and_are_summed():
    segments = build_segments([Turn("user", "x", {"image": [emb(1.0), emb(2.0)]})])
    tag = segments[1]
    assert tag.embeds.shape == (2, H)
    table = torch.eye(16, H)
    embeds, _ = splice_embeddings(segments, lambda s: [3] * len(s.split()), lambda ids: table[ids], bos_id=1)
    # BOS + "### Human:" (2 words) | <Img> sum </Img> | BOS + "x\n### Assistant:" (3 words)
    assert embeds.shape == (1, 3 + 3 + 4, H)
    assert torch.allclose(embeds[0, 4], torch.full((H,), 3.0))


def test_bos_per_text_segment_option():
    segments = build_segments([Turn("user", "a b", {"audio": [emb()]})])
    table = torch.arange(16 * H, dtype=torch.float32).reshape(16, H)
    tok = lambda s: [5] * len(s.split())
    each, n_each = splice_embeddings(segments, tok, lambda ids: table[ids], bos_id=1, bos_per_text_segment=True)
    once, n_once = splice_embeddings(segments, tok, lambda ids: table[ids], bos_id=1, bos_per_text_segment=False)
    assert each.shape[1] == once.shape[1] + 1 and n_each == n_once + 1
    bos_rows = [i for i in range(each.shape[1]) if torch.equal(each[0, i], table[1])]
    assert len(bos_rows) == 2  # one BOS before each text segment, as the reference does
