"""The viewer page ``/medcbir/ui/`` driven by headless Chromium against a real Orthanc + plugin.

The browser holds Orthanc credentials the way a logged-in user's does (an Authorization header
on every request it makes), and the page uses only relative same-origin URLs. The DOM is checked
at each step and a screenshot is saved (its path is printed; docs/viewer.png comes from
``test_viewer_regions.py``).
"""

from __future__ import annotations

import pydicom
import pytest

from tests.pacs.browser import Waiter
from tests.pacs.browser import loaded_images as _loaded_images

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.chromium]

K = 4


def test_viewer_lists_studies_searches_and_shows_overlays(results_server, results_archive, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server = results_server
    wait = Waiter(browser, tmp_path)
    # without credentials the page is refused like any Orthanc route
    assert server.rest.session.__class__().get(server.url + "/medcbir/ui/").status_code == 401
    assert server.rest.session.get(server.url + "/medcbir/ui/../../etc/passwd").status_code == 404
    browser.get(server.url + "/medcbir/ui")   # the page moves itself to ui/
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/medcbir/ui/"))
    # no resource of the page comes from anywhere but this Orthanc
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#studies li"), "the study list")
    sources = browser.execute_script("return [...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href);")
    assert sources and all(s.startswith(server.url + "/medcbir/ui/") for s in sources)

    n_studies = len(server.rest.get_json("/studies"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#studies li")) == n_studies)
    wait.until(lambda d: "images" in d.find_element(By.ID, "status").text)

    query_ds = pydicom.dcmread(results_archive[12], stop_before_pixels=True)
    instance = server.rest.lookup_sop(query_ds.SOPInstanceUID)
    series, study = server.rest.parents(instance)
    browser.find_element(By.CSS_SELECTOR, f'#studies li[data-study="{study}"]').click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#series li[data-series="{series}"]'))
    browser.find_element(By.CSS_SELECTOR, f'#series li[data-series="{series}"]').click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#instances img[data-instance="{instance}"]'))

    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys(str(K))
    Select(browser.find_element(By.ID, "exclude")).select_by_value("same-patient")
    browser.find_element(By.CSS_SELECTOR, f'#instances img[data-instance="{instance}"]').click()
    wait.until(lambda d: _loaded_images(d, "#neighbours .card img.thumb") == K, "K neighbour images")
    cards = browser.find_elements(By.CSS_SELECTOR, "#neighbours .card")
    expected = server.rest.post("/medcbir/search", json={"instance": instance, "k": K, "exclude": "same-patient", "per_series": 0}).json()
    assert [c.get_attribute("data-instance") for c in cards] == [n["instance"] for n in expected["neighbours"]]
    for c, n in zip(cards, expected["neighbours"]):
        assert f"#{n['rank']} · score {n['score']:.4f} · percentile {n['percentile']:.1f}" in c.text and "CT" in c.text
        series = server.rest.get_json(f"/series/{n['series']}")["MainDicomTags"]
        assert series["SeriesDescription"] and series["SeriesDescription"] in c.text  # what the series is
        date = server.rest.get_json(f"/studies/{n['study']}")["MainDicomTags"]["StudyDate"]
        assert f"{date[:4]}-{date[4:6]}-{date[6:8]}" in c.text
        # the position along the series in mm, and the slice's place in it
        assert f"position {n['position_mm']:.1f} mm (slice {n['index_in_series']} of {n['series_slices']})" in c.text
        # medcbir's rendering at the stored resolution (not Orthanc's preview)
        thumb = c.find_element(By.CSS_SELECTOR, "img.thumb")
        assert thumb.get_attribute("src").endswith(f"/medcbir/render/{n['instance']}")
        rows, cols = (int(server.rest.tags(n["instance"])[key]) for key in ("Rows", "Columns"))
        assert browser.execute_script("return [arguments[0].naturalHeight, arguments[0].naturalWidth];", thumb) == [rows, cols]
        # a click opens Orthanc's own viewer for that instance
        href = c.find_element(By.CSS_SELECTOR, "a.open").get_attribute("href")
        assert href == f"{server.url}/app/explorer.html#instance?uuid={n['instance']}"
    assert server.rest.session.get(server.url + "/app/explorer.html").status_code == 200
    assert _loaded_images(browser, "#query .card img.thumb") == 1

    # the methods offered are those the server's encoder runs (a torch checkpoint here: gradients too)
    offered = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#method option")]
    assert offered[0] == "relax" and "gradcam" in offered
    Select(browser.find_element(By.ID, "method")).select_by_value("gradcam")
    browser.find_element(By.ID, "explain").click()
    Waiter(browser, tmp_path, timeout=600).until(lambda d: _loaded_images(d, ".card img.overlay") == K + 1, "the overlays")
    assert "overlays stored in the PACS" in browser.find_element(By.ID, "message").text
    # every shown neighbour is explained (K and the explained neighbours agree)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#neighbours .card img.overlay")) == K
    # the method's measured status and the caveat
    status = browser.find_element(By.ID, "explain-status").text
    assert "Grad-CAM" in status and ("not evaluated" in status or "explain-eval" in status) and "not for diagnosis" in status
    overlay = browser.find_element(By.CSS_SELECTOR, "#query .card img.overlay")
    stored = overlay.get_attribute("data-overlay")
    assert server.rest.tags(stored)["Manufacturer"] == "medcbir" and server.rest.parents(stored)[1] == study
    # the overlay spans the whole image: the source's full frame, laid exactly over the rendered image
    overlay_tags, source_tags = server.rest.tags(stored), server.rest.tags(instance)
    assert (overlay_tags["Rows"], overlay_tags["Columns"]) == (source_tags["Rows"], source_tags["Columns"])
    boxes = browser.execute_script(
        "const c = document.querySelector('#query .card');"
        "const r = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; };"
        "return [r(c.querySelector('img.thumb')), r(c.querySelector('img.overlay'))];")
    assert boxes[0] == pytest.approx(boxes[1], abs=0.5) and boxes[0][2] > 200

    shot = tmp_path / "viewer.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"viewer screenshot: {shot}")
