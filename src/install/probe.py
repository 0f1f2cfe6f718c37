# python-docker-mcp doctor: can the installer container install? It runs exactly where an
# install runs (the installer container, its network, its mounts) as
#   python3 -c <this file> '<json settings>'
# and prints one JSON line: pip's version, whether uv is there, and whether the package
# index answers (`pip index versions pip`: one small request, nothing is installed).
import json
import shutil
import subprocess
import sys

settings = json.loads(sys.argv[1])
out = {"pip": None, "uv": shutil.which("uv") is not None, "index": False, "error": None}


def tail(text, lines=3):
    kept = [line for line in text.strip().splitlines() if "experimental command" not in line]
    return "\n".join(kept[-lines:])[-1000:]


version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
if version.returncode != 0:
    out["error"] = tail(version.stderr or version.stdout) or "pip does not run"
else:
    out["pip"] = version.stdout.split(" from ")[0].strip()
    cmd = [sys.executable, "-m", "pip", "--no-input", "--disable-pip-version-check",
           "index", "versions", "pip", "--timeout", "10", "--retries", "1"]
    if settings.get("index_url"):
        cmd += ["--index-url", settings["index_url"]]
    for url in settings["extra_index_urls"]:
        cmd += ["--extra-index-url", url]
    for host in settings["trusted_hosts"]:
        cmd += ["--trusted-host", host]
    try:
        answer = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out["index"] = answer.returncode == 0
        if not out["index"]:
            out["error"] = tail(answer.stderr or answer.stdout)
    except subprocess.TimeoutExpired:
        out["error"] = "the package index did not answer within 60 s"
print(json.dumps(out), flush=True)
