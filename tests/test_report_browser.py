"""The subject report as a reader sees it: rendered by headless Chromium (the ``chromium`` fixture of conftest:
skipped with one line where it is not installed, a failure under FLATPREP_REQUIRE_BROWSER=1 as in CI)."""

import json
import re
import shutil
import subprocess

import pytest

#: Runs in the page once it has loaded: what a reader would notice, written into the DOM for --dump-dom.
PROBE = """<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), loaded: i.complete && i.naturalWidth > 0,
                                                 right: i.getBoundingClientRect().right}));
  const texts = [...document.querySelectorAll('body *')].filter(e =>
      [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()));
  const small = texts.filter(e => parseFloat(getComputedStyle(e).fontSize) < 10)
                     .map(e => e.tagName + ' ' + getComputedStyle(e).fontSize);
  const wide = [...document.body.children].filter(e => e.getBoundingClientRect().right > width + 0.5)
                                          .map(e => e.tagName + ' ' + e.getBoundingClientRect().right);
  const probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = JSON.stringify({width, scrollWidth: document.documentElement.scrollWidth, images, small,
                                      wide, n_texts: texts.length});
  document.body.appendChild(probe);
});
</script>"""


def _render(chromium: str, page, profile, *, width: int) -> dict:
    """The probe's findings for ``page`` in a ``width``-pixel-wide window."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={width},900", "--hide-scrollbars",
               "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", done.stdout, re.S)
    assert found, f"the probe did not run (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


@pytest.mark.parametrize("width", [1280, 800])
def test_subject_report_renders_whole_in_a_browser(chromium, participant_out, tmp_path, width):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out / "sub-01" / "figures", out / "sub-01" / "figures")
    page = out / "sub-01.html"
    page.write_text((participant_out / "sub-01.html").read_text().replace("</body>", PROBE + "</body>"))
    found = _render(chromium, page, tmp_path / "profile", width=width)
    assert len(found["images"]) == 10 and found["n_texts"] > 50
    assert [i["src"] for i in found["images"] if not i["loaded"]] == []  # every image loads
    assert found["scrollWidth"] <= found["width"] and found["wide"] == []  # nothing wider than the page
    assert all(i["right"] <= found["width"] for i in found["images"])
    assert found["small"] == []  # no text under 10 px


def test_group_page_renders_whole_in_a_browser(chromium, grouped, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(grouped / "figures", out / "figures")
    page = out / "group.html"
    page.write_text((grouped / "group.html").read_text().replace("</body>", PROBE + "</body>"))
    found = _render(chromium, page, tmp_path / "profile", width=1000)
    assert found["images"] and [i["src"] for i in found["images"] if not i["loaded"]] == []
    assert found["scrollWidth"] <= found["width"] and found["wide"] == []
    assert found["small"] == []
