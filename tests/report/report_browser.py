"""Render a report in headless Chromium and say what the browser saw. The report is copied on its own
into a scratch folder (so only what is inside the HTML can load: the self-containment check) with a
small probe script appended that, after the load event, records each image's decoded size and the
page's section and finding ids into an element that --dump-dom then prints."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({file: i.dataset.file || null, alt: i.alt,
    loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth, height: i.naturalHeight}));
  const out = {images,
    sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
    findings: [...document.querySelectorAll('#findings .finding')].map(f => f.id),
    coverage: (document.querySelector('#coverage') || {}).innerText || '',
    summary: (document.querySelector('#summary') || {}).innerText || '',
    provenance: (document.querySelector('#provenance') || {}).innerText || ''};
  const pre = document.createElement('pre');
  pre.id = 'probe-result';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def render(report_html: Path, scratch: Path, timeout: float = 90) -> dict[str, Any]:
    """What Chromium saw on the page: images (file, loaded, width, height), section ids, finding ids,
    and the visible text of the coverage and provenance sections."""
    scratch.mkdir(parents=True, exist_ok=True)
    page = scratch / "probe.html"
    text = report_html.read_text(encoding="utf-8")
    assert "</body>" in text, "the report is not a complete HTML page"
    page.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    cmd = ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--disable-dev-shm-usage", f"--user-data-dir={scratch / 'profile'}", "--virtual-time-budget=10000",
           "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.S)
    # Chromium's stderr is noisy (dbus, GPU); only its tail matters when the probe did not run.
    assert m, f"probe did not run (rc={proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(m[1]))
