"""The web page at ``/`` in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

The test loads the page from a live server on 127.0.0.1, uploads a voice through the form, picks
it, submits text and waits until the page has received and assembled audio (the download link and
its sample count).  In CI (``CI=true``) a missing browser is a failure; elsewhere the test skips
and says why.  ``TORTOISE_XPU_SCREENSHOT=path`` saves a screenshot of the finished page (how
docs/serve-page.png was made).
"""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from tests.serve_live import live_server

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _need_browser() -> None:
    missing = [what for what, ok in (("chromium", CHROMIUM), ("chromium-driver", os.path.exists(CHROMEDRIVER)))
               if not ok]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the browser test: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=900,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_uploads_a_voice_and_plays_speech_as_it_streams(browser, tiny_models_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    clip = tmp_path / "clip.wav"
    t = np.arange(2 * 22050) / 22050
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 160 * t)).astype(np.float32), 22050)
    with live_server(tiny_models_dir, tmp_path / "voices", max_batch=4) as srv:
        browser.get(srv.url + "/")
        wait = WebDriverWait(browser, 60)
        # Upload a voice through the form; the picker then offers and selects it.
        browser.find_element(By.ID, "vname").send_keys("page_voice")
        browser.find_element(By.ID, "vfiles").send_keys(str(clip))
        browser.find_element(By.ID, "upload").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "is ready"))
        assert Select(browser.find_element(By.ID, "voice")).first_selected_option.text == "page_voice"
        text = browser.find_element(By.ID, "text")
        text.clear()
        text.send_keys("Hello from the browser test.")
        Select(browser.find_element(By.ID, "model")).select_by_value("tts-1")
        browser.find_element(By.ID, "seed").send_keys("7")
        browser.find_element(By.ID, "speak").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "done:"))
        result = browser.find_element(By.ID, "result")
        samples = int(result.get_attribute("data-samples"))
        link = result.find_element(By.TAG_NAME, "a")
        assert link.get_attribute("download") == "speech.wav" and link.get_attribute("href").startswith("blob:")
        assert "first audio after" in browser.find_element(By.ID, "status").text
        # The page got all the audio the server sends for the same request.
        import httpx

        ref = httpx.post(srv.url + "/v1/audio/speech", timeout=60, json={
            "model": "tts-1", "input": "Hello from the browser test.", "voice": "page_voice", "seed": 7,
            "response_format": "pcm"}).content
        assert samples == len(ref) // 2 > 0
        # The download is a WAV file holding that audio (read back through the page's own blob URL).
        b64 = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {
              let s = ""; const u = new Uint8Array(b);
              for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);
              done(btoa(s)); });""", link.get_attribute("href"))
        wav, rate = sf.read(io.BytesIO(base64.b64decode(b64)), dtype="int16")
        assert rate == 24000 and np.abs(wav.astype(int) - np.frombuffer(ref, "<i2")).max() <= 1
        shot = os.environ.get("TORTOISE_XPU_SCREENSHOT")
        if shot:
            browser.save_screenshot(shot)
        # A bad request shows the server's message on the page.
        text.clear()
        browser.find_element(By.ID, "speak").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "non-empty"))
        assert "err" in browser.find_element(By.ID, "status").get_attribute("class")
