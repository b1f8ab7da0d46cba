"""Headless Chromium for the tests (Debian's chromium + chromium-driver, driven by selenium):
the fake camera and microphone, loopback candidates only, no background throttling of tabs."""

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


def browser(fake_fps: int | None = None, secure_origin: str | None = None) -> webdriver.Chrome:
    """A headless Chromium; `fake_fps` sets the fake camera's frame rate (Chromium's default: 20);
    `secure_origin` (an http origin off loopback) is treated as secure, so a page from it may
    open the fake camera."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        "--use-fake-device-for-media-stream" + (f"=fps={fake_fps}" if fake_fps else ""),
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--force-webrtc-ip-handling-policy=default",
    ] + ([f"--unsafely-treat-insecure-origin-as-secure={secure_origin}"] if secure_origin else []):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)
