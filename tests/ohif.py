"""The real OHIF viewer for the tests: its npm build (pinned, hash-checked), served with Orthanc's DICOMweb.

``ohif_dist`` fetches ``@ohif/app`` with ``npm pack`` into ``build/ohif/`` once, checks the archive's sha512
against the pinned integrity (npm's own ``dist.integrity``), and unpacks its ``dist/`` (the built viewer).
``Viewer`` serves that folder and proxies ``/dicom-web/`` to an Orthanc on loopback, so the viewer and its
data come from one origin (no CORS), with an ``app-config.js`` pointing the DICOMweb data source there.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
CACHE = REPO / "build" / "ohif"

APP_CONFIG = """window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  investigationalUseDialog: { option: 'never' },
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (vald tests)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def ohif_dist() -> Path | str:
    """The unpacked ``dist/`` of the pinned OHIF build, or the reason it cannot be had here (a skip)."""
    target = CACHE / OHIF_VERSION / "package" / "dist"
    if (target / "index.html").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed (it fetches the OHIF build, @ohif/app)"
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", str(CACHE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    archive = CACHE / f"ohif-app-{OHIF_VERSION}.tgz"
    if done.returncode != 0 or not archive.is_file():
        return f"npm pack @ohif/app@{OHIF_VERSION} failed: {done.stderr.strip()[-200:]}"
    digest = "sha512-" + base64.b64encode(hashlib.sha512(archive.read_bytes()).digest()).decode()
    if digest != OHIF_INTEGRITY:
        archive.unlink()
        raise AssertionError(f"the OHIF archive's sha512 is {digest}, not the pinned {OHIF_INTEGRITY}")
    staging = CACHE / f".{OHIF_VERSION}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    staging.rename(CACHE / OHIF_VERSION)
    return target


class Viewer:
    """OHIF's ``dist/`` and Orthanc's ``/dicom-web`` on one loopback origin."""

    def __init__(self, dist: Path, dicomweb: str) -> None:
        self.dist, self.dicomweb = dist, dicomweb.rstrip("/")
        handler = _handler(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _handler(viewer: Viewer) -> Any:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(viewer.dist), **kwargs)

        def log_message(self, *_args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/dicom-web/"):
                self._proxy()
            elif path == "/app-config.js":
                self._send(APP_CONFIG.encode(), "application/javascript")
            elif path in ("/sw.js", "/init-service-worker.js"):
                self._send(b"", "application/javascript")  # no service worker: every request reaches the server
            elif (viewer.dist / path.lstrip("/")).is_file():
                super().do_GET()
            else:
                self.path = "/index.html"  # the single-page app's own routes (/viewer, ...)
                super().do_GET()

        def _send(self, body: bytes, kind: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self) -> None:
            request = urllib.request.Request(viewer.dicomweb + self.path[len("/dicom-web") :])
            for name in ("Accept", "Range"):
                if self.headers.get(name):
                    request.add_header(name, self.headers[name])
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    body, status, kind = answer.read(), answer.status, answer.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                body, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "text/plain")
            self._send(body, kind, status)

    return Handler
