"""The chat demo end to end in headless Chromium against the live server (tiny preset).

The tiny model's text is gibberish and its media noise, but every path runs: these tests check
that the page drives them (what is sent, what is shown, what plays), not what the model says.
"""
from __future__ import annotations

import base64
import json
import re

import pytest

from .conftest import Page

pytestmark = pytest.mark.browser

DONE = ".msg-assistant:not(.streaming)"


# --------------------------------------------------------------------------- helpers

def open_settings(page) -> None:
    if page.get_attribute("#open-settings", "aria-expanded") != "true":
        page.click("#open-settings")
    page.wait_for_selector("#settings:not([hidden])")


def close_settings(page) -> None:
    page.click("#done-settings")
    page.wait_for_selector("#settings", state="hidden")


def set_outputs(page, **states: str) -> None:
    """Through the settings panel: image="always" | "auto" | "off", ..."""
    open_settings(page)
    for modality, state in states.items():
        page.check(f'input[name="out-{modality}"][value="{state}"]')


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_answers(page, n: int, timeout: float = 60_000) -> None:
    """Until `n` assistant turns have ended (done, stopped or failed)."""
    page.wait_for_function(
        "n => document.querySelectorAll('.msg-assistant:not(.streaming)').length >= n", arg=n, timeout=timeout)


def sent_requests(ui) -> list[dict]:
    return [m for m in ui.frames_out if m.get("type") == "chat.request"]


@pytest.fixture()
def ui(ui):
    """The page, plus the client's own frames (what the page sent over the socket)."""
    ui.frames_out = []

    def watch(ws):
        def sent(payload):
            try:
                ui.frames_out.append(json.loads(payload))
            except (TypeError, ValueError):
                pass
        ws.on("framesent", sent)

    ui.page.on("websocket", watch)
    return ui


# --------------------------------------------------------------------------- tests

def test_attach_send_and_stream(ui, media_files):
    """Image and audio attached through the file picker, a third removed again; the request
    carries them as content parts; the answer streams in delta by delta."""
    page = ui.open().page
    ui.shot("empty")

    page.set_input_files("#file-input", [str(media_files[k]) for k in ("image", "audio", "video")])
    page.wait_for_function("document.querySelectorAll('#tray .chip').length === 3")
    page.click(".chip-video .chip-remove")
    page.wait_for_function("document.querySelectorAll('#tray .chip').length === 2")
    assert page.locator(".chip-image img").evaluate("img => img.complete && img.naturalWidth > 0")
    page.fill("#prompt", "What do you see and hear?")
    ui.shot("attachments")

    # Count text nodes the page appends while the turn is still streaming.
    page.evaluate("""() => {
        window.__streamed = 0;
        new MutationObserver(records => {
            for (const r of records) for (const n of r.addedNodes)
                if (n.nodeType === 3 && n.parentElement && n.parentElement.classList.contains('msg-text')
                    && n.parentElement.closest('.msg-assistant.streaming')) window.__streamed++;
        }).observe(document.getElementById('messages'), {childList: true, subtree: true});
    }""")
    page.press("#prompt", "Enter")
    page.wait_for_selector(DONE)

    (req,) = sent_requests(ui)
    parts = req["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "input_audio"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[2]["input_audio"]["format"] == "wav"
    assert base64.b64decode(parts[2]["input_audio"]["data"]) == media_files["audio"].read_bytes()

    deltas = [m["delta"] for m in ui.frames("text.delta")]
    assert len(deltas) >= 2, "the tiny model's answer should arrive in several deltas"
    assert page.evaluate("window.__streamed") == len(deltas)
    assert page.inner_text(".msg-assistant .msg-text") == "".join(deltas)
    assert page.get_attribute('[role="log"]', "aria-live") == "polite"
    (done,) = ui.frames("done")
    assert done["finish_reason"] in ("stop", "length")

    # The user's turn shows what was sent: a thumbnail that rendered and a player.
    assert page.locator(".msg-user img").evaluate("img => img.complete && img.naturalWidth > 0")
    page.wait_for_function("document.querySelector('.msg-user audio').readyState >= 1")
    assert page.locator("#tray .chip").count() == 0
    assert page.input_value("#prompt") == ""
    ui.shot("answer")


def test_required_outputs_render_and_play(ui):
    """Image, audio and video required through the settings panel: each renders or plays inline,
    each downloads, and the settings survive a reload."""
    page = ui.open().page
    set_outputs(page, image="always", audio="always", video="always")
    page.fill("#set-max-tokens", "16")
    page.fill("#set-seed", "7")
    ui.shot("settings")
    close_settings(page)
    send(page, "Show me a red circle, play a tone and animate a square.")
    page.wait_for_selector(DONE)

    (req,) = sent_requests(ui)
    assert req["modalities"] == ["text", "image", "audio", "video"]
    assert req["required_modalities"] == ["image", "audio", "video"]
    assert req["max_tokens"] == 16 and req["seed"] == 7
    assert {m["modality"] for m in ui.frames("media.done")} == {"image", "audio", "video"}

    assert page.locator(".media-card.image img").evaluate("img => img.complete && img.naturalWidth > 0")
    for kind in ("audio", "video"):
        page.wait_for_function(
            f"() => {{ const m = document.querySelector('.media-card.{kind} {kind}');"
            " return m && m.readyState >= 1 && m.duration > 0; }")
    assert page.locator(".media-card.video video").evaluate("v => v.videoWidth") > 0

    names = {}
    for kind, magic in (("image", b"\x89PNG"), ("audio", b"RIFF"), ("video", None)):
        with page.expect_download() as info:
            page.click(f".media-card.{kind} a.dl")
        download = info.value
        names[kind] = download.suggested_filename
        data = open(download.path(), "rb").read()
        assert data[:4] == magic if magic else data[4:8] == b"ftyp"
    assert [names[k].rsplit(".", 1)[1] for k in ("image", "audio", "video")] == ["png", "wav", "mp4"]
    ui.shot("media")

    page.reload()
    ui.wait_ready()
    states = page.eval_on_selector_all(".out-chip", "cs => cs.map(c => c.dataset.state)")
    assert states == ["always", "always", "always"]
    open_settings(page)
    assert page.input_value("#set-max-tokens") == "16" and page.input_value("#set-seed") == "7"


def test_stop_a_long_request_then_new_conversation(ui):
    """A long video (100 steps, 32 frames) shows its step count; a second tab meanwhile finds the
    server busy (queue of one); Stop cancels the video on the server, and New chat resets the
    conversation; the next request still runs."""
    page = ui.open().page
    set_outputs(page, image="off", audio="off", video="always")
    page.fill("#set-steps", "100")
    page.fill("#set-frames", "32")
    page.fill("#set-max-tokens", "8")
    close_settings(page)
    send(page, "Animate a square moving right, slowly.")

    page.wait_for_function("() => { const s = document.querySelector('.media-card.video .media-sub');"
                           " return s && /^\\d+ \\/ 100 steps$/.test(s.textContent) && !s.textContent.startsWith('0 '); }")
    bar = page.locator('.media-card.video [role="progressbar"]')
    assert bar.get_attribute("aria-valuemax") == "100"
    assert page.is_visible("#stop") and not page.is_visible("#send")
    ui.shot("progress")

    # Meanwhile, in a second tab, the server is full: the answer says so in plain words.
    with ui.live.settings(queue_size=1):
        other = Page(page.context.new_page(), ui.live, ui.shots).open()
        send(other.page, "Anyone there?")
        other.page.wait_for_selector(".msg-assistant .notice")
        assert "busy" in other.page.inner_text(".msg-assistant .notice")
        assert other.page.is_visible(".msg-assistant .notice button.retry")
        other.shot("busy")
        assert not other.errors, other.errors
        other.page.close()

    page.click("#stop")
    page.wait_for_selector(".badge.stopped")
    assert any(m.get("type") == "cancel" for m in ui.frames_out)
    (done,) = ui.frames("done")
    assert done["finish_reason"] == "cancelled"
    assert not ui.frames("media.done")
    assert "Stopped" in page.inner_text(".media-card.video")
    assert page.is_visible("#send") and not page.is_visible("#stop")
    ui.shot("stopped")

    page.click("#new-chat")
    page.wait_for_function("document.querySelectorAll('#messages > li').length === 0")
    page.wait_for_function("() => window.nextgpt && !window.nextgpt.busy")
    assert page.is_visible("#empty")
    assert any(m.get("type") == "reset" for m in ui.frames_out)
    page.wait_for_function("() => true")  # let reset.done arrive
    ui.live.scheduler_idle()

    open_settings(page)
    page.click("#reset-settings")
    set_outputs(page, image="off", audio="off", video="off")
    close_settings(page)
    send(page, "Hello again")
    wait_answers(page, 1)
    assert ui.frames("done")[-1]["finish_reason"] in ("stop", "length")
    assert "reset.done" in {json.loads(f).get("type") for f in ui.frames_in}


def test_friendly_errors(ui, media_files):
    """A broken PNG, a file that is not media, and a file over a lowered server limit: each is
    reported in plain words in the conversation, and the page keeps working."""
    page = ui.open().page

    page.set_input_files("#file-input", str(media_files["garbage"]))
    send(page, "What is in this photo?")
    page.wait_for_selector(".msg-assistant .notice")
    notice = page.inner_text(".msg-assistant .notice")
    assert "couldn't be read" in notice and "holiday.png" in notice
    assert "messages[" not in notice and "Traceback" not in notice

    page.set_input_files("#file-input", str(media_files["text"]))
    page.wait_for_selector(".msg-system .notice")
    notice = page.inner_text(".msg-system .notice")
    assert "isn't supported" in notice and "notes.txt" in notice
    assert page.locator("#tray .chip").count() == 0

    with ui.live.settings(max_media_bytes=20_000):
        page.reload()  # a new socket picks up the lowered limit
        ui.wait_ready()
        page.set_input_files("#file-input", str(media_files["long_audio"]))
        send(page, "Listen to this.")
        page.wait_for_selector(".msg-assistant .notice")
    notice = page.inner_text(".msg-assistant .notice")
    assert "too large" in notice and "long-tone.wav" in notice

    # the two earlier notices are gone with the reload: show all three in one screenshot
    page.set_input_files("#file-input", str(media_files["garbage"]))
    send(page, "And this one?")
    wait_answers(page, 2)
    page.set_input_files("#file-input", str(media_files["text"]))
    page.wait_for_selector(".msg-system .notice")
    ui.shot("errors")


def test_drop_paste_keyboard(ui, media_files):
    """Files dropped on the page and pasted into the box are attached; Shift+Enter is a new line,
    Enter sends; an attachment can be removed from the keyboard."""
    page = ui.open().page
    png = base64.b64encode(media_files["image"].read_bytes()).decode()
    wav = base64.b64encode(media_files["audio"].read_bytes()).decode()
    make_file = """(b64, name, type) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type}));
        return dt;
    }"""
    page.evaluate(f"""([b64]) => {{
        const dt = ({make_file})(b64, 'dropped.png', 'image/png');
        document.body.dispatchEvent(new DragEvent('dragenter', {{dataTransfer: dt, bubbles: true}}));
        window.__dropData = dt;
    }}""", [png])
    page.wait_for_selector("#drop:not([hidden])")
    ui.shot("drop", phone=False)
    page.evaluate("() => document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: window.__dropData, bubbles: true}))")
    page.wait_for_selector("#drop", state="hidden")
    page.evaluate(f"""([b64]) => {{
        const dt = ({make_file})(b64, 'pasted-tone.wav', 'audio/wav');
        document.getElementById('prompt').dispatchEvent(new ClipboardEvent('paste', {{clipboardData: dt, bubbles: true}}));
    }}""", [wav])
    page.wait_for_function("document.querySelectorAll('#tray .chip').length === 2")
    names = page.eval_on_selector_all("#tray .chip-name", "ns => ns.map(n => n.textContent)")
    assert names == ["dropped.png", "pasted-tone.wav"]

    page.set_input_files("#file-input", str(media_files["video"]))
    page.wait_for_function("document.querySelectorAll('#tray .chip').length === 3")
    page.focus(".chip-video .chip-remove")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#tray .chip').length === 2")

    page.click("#prompt")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    assert page.locator("#messages > li").count() == 0
    page.keyboard.press("Enter")
    page.wait_for_selector(DONE)
    (req,) = sent_requests(ui)
    assert req["messages"][0]["content"][0] == {"type": "text", "text": "first line\nsecond line"}
    assert [p["type"] for p in req["messages"][0]["content"][1:]] == ["image_url", "input_audio"]
    assert page.inner_text(".msg-user .bubble") == "first line\nsecond line"


def test_loading_state_then_reconnect(ui):
    """While /ready answers 503 the page says the model is loading and polls; once it is ready
    the page connects. A dropped socket is reconnected and the conversation goes on."""
    page = ui.page
    not_ready = json.dumps({"error": {"message": "the model is still loading", "type": "service_unavailable_error",
                                      "param": None, "code": "not_ready"}})
    page.route("**/ready", lambda route: route.fulfill(status=503, body=not_ready, content_type="application/json",
                                                        headers={"Retry-After": "5"}))
    ui.open(wait_ready=False)
    page.wait_for_selector('#app[data-conn="loading"]')
    page.wait_for_selector("#loading:not([hidden])")
    assert "Loading the model" in page.inner_text("#loading")
    page.fill("#prompt", "Are you there?")
    assert page.is_disabled("#send")
    ui.shot("loading")
    page.unroute("**/ready")
    ui.wait_ready()
    assert page.is_hidden("#loading")
    page.press("#prompt", "Enter")
    wait_answers(page, 1)

    page.evaluate("() => window.nextgpt.socket.close()")
    page.wait_for_function("() => window.nextgpt.connection !== 'ready'")
    ui.wait_ready()
    page.wait_for_selector(".msg-system .notice.info")
    assert "Reconnected" in page.inner_text(".msg-system .notice.info")
    send(page, "Still there?")
    wait_answers(page, 2)
    assert len(ui.frames("session.created")) == 2
    ui.shot("reconnected")


def test_api_key(ui):
    """With API keys on, the page asks for one; entered in the settings, it is kept and used."""
    with ui.live.settings(api_keys=["s3cret-key"]):
        page = ui.open(wait_ready=False).page
        page.wait_for_selector('#app[data-conn="auth"]')
        assert "API key" in page.inner_text("#loading")
        open_settings(page)
        page.fill("#set-api-key", "s3cret-key")
        ui.wait_ready()
        close_settings(page)
        send(page, "Hello with a key")
        wait_answers(page, 1)
        assert ui.frames("done")
        stored = page.evaluate("() => JSON.parse(localStorage.getItem('nextgpt.settings.v1')).api_key")
        assert stored == "s3cret-key"


def test_microphone_recording(ui):
    """Chromium's fake microphone: record, stop, and the clip is attached and sent."""
    page = ui.open().page
    page.wait_for_selector("#mic:not([hidden])")
    page.click("#mic")
    page.wait_for_selector('#mic[aria-pressed="true"]')
    page.wait_for_function("document.getElementById('rec-time').textContent === '0:01'", timeout=5_000)
    page.click("#mic")
    page.wait_for_selector("#tray .chip-audio")
    name = page.inner_text("#tray .chip-audio .chip-name")
    assert re.fullmatch(r"recording-\d{6}\.(webm|ogg|m4a)", name), name
    send(page, "What did I say?")
    page.wait_for_selector(DONE)
    (req,) = sent_requests(ui)
    part = req["messages"][0]["content"][1]
    assert part["type"] == "audio_url" and part["audio_url"]["url"].startswith("data:audio/")
    assert not page.locator(".msg-assistant .notice").count(), page.inner_text(".msg-assistant")


def test_theme_follows_the_system_until_one_is_chosen(ui):
    """"System" follows the OS as it changes; "Dark" or "Light" overrides it and survives a
    reload, applied before first paint. One dark palette in the CSS serves both ways there."""
    page = ui.open().page
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    page.wait_for_selector('html[data-theme="dark"]', state="attached")  # the change event comes a frame later
    dark = page.evaluate(background)
    assert light != dark
    open_settings(page)
    page.check('input[name="theme"][value="light"]')
    close_settings(page)
    assert page.evaluate(background) == light  # the choice beats the system's dark
    page.reload()
    assert page.get_attribute("html", "data-theme") == "light" and page.evaluate(background) == light
    open_settings(page)
    page.check('input[name="theme"][value="system"]')
    close_settings(page)
    assert page.evaluate(background) == dark
    page.emulate_media(color_scheme="light")
    page.wait_for_selector('html[data-theme="light"]', state="attached")
    assert page.evaluate(background) == light
