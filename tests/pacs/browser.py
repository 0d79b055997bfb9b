"""Headless Chromium helpers for the viewer page tests (``/medcbir/ui/`` on a real Orthanc)."""

from __future__ import annotations

from pathlib import Path


def loaded_images(driver, css: str) -> int:
    """How many images matching ``css`` have loaded real pixels."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter(i => i.complete && i.naturalWidth > 0).length;", css)


class Waiter:
    """``until(condition)`` with the page's own message and a screenshot when it times out."""

    def __init__(self, driver, folder: Path, timeout: float = 120.0) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.folder, self.wait = driver, folder, WebDriverWait(driver, timeout, poll_frequency=0.2)

    def until(self, condition, what: str = "the page"):
        from selenium.common.exceptions import TimeoutException

        try:
            return self.wait.until(condition)
        except TimeoutException:
            shot = self.folder / "timeout.png"
            self.driver.save_screenshot(str(shot))
            text = self.driver.execute_script("const m = document.getElementById('message'); return m ? m.textContent : document.title;")
            raise AssertionError(f"timed out waiting for {what}; page says {text!r}; screenshot {shot}") from None


def open_instance(driver, wait: Waiter, server, instance: str) -> None:
    """Open the page and click through the instance's study and series to the instance itself."""
    from selenium.webdriver.common.by import By

    series, study = server.rest.parents(instance)
    driver.get(server.url + "/medcbir/ui/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#studies li[data-study="{study}"]'), "the study list")
    driver.find_element(By.CSS_SELECTOR, f'#studies li[data-study="{study}"]').click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#series li[data-series="{series}"]'), "the series list")
    driver.find_element(By.CSS_SELECTOR, f'#series li[data-series="{series}"]').click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#instances img[data-instance="{instance}"]'), "the instances")


def drag_box(driver, img, box) -> None:
    """Draw ``box`` (x, y, w, h in the image's stored pixels) on ``img`` with the mouse: press at
    its top-left corner, move, release at its bottom-right corner."""
    from selenium.webdriver.common.action_chains import ActionChains

    left, top, width, height, cols, rows = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight];", img)
    x, y, w, h = box
    sx, sy = width / cols, height / rows
    # offsets from the element's centre (Selenium 4), at the middle of the corner pixels
    start = ((x + 0.5) * sx - width / 2, (y + 0.5) * sy - height / 2)
    end = ((x + w - 0.5) * sx - width / 2, (y + h - 0.5) * sy - height / 2)
    (ActionChains(driver).move_to_element_with_offset(img, round(start[0]), round(start[1])).click_and_hold()
     .move_by_offset(round((end[0] - start[0]) / 2), round((end[1] - start[1]) / 2))
     .move_to_element_with_offset(img, round(end[0]), round(end[1])).release().perform())


def box_on_screen(driver, css: str) -> list[list[float]]:
    """Each box matching ``css`` in its image's stored pixels, measured from where it is drawn."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(b => {"
        " const img = b.parentElement.querySelector('img.thumb'), r = img.getBoundingClientRect(), q = b.getBoundingClientRect();"
        " const sx = img.naturalWidth / r.width, sy = img.naturalHeight / r.height;"
        " return [(q.left - r.left) * sx, (q.top - r.top) * sy, q.width * sx, q.height * sy]; });", css)
