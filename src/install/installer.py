# python-docker-mcp installer: runs in a short-lived installer container as
#   python3 -c <this file> '<json settings>'
# The target volume is mounted at /target and the download cache at /cache. Packages are
# installed into a staging directory first and moved into /target only when the installer
# succeeded, so a failed or killed install leaves the environment as it was (a stale
# staging directory is hidden, not importable, and removed by the next install).
import json
import os
import shutil
import subprocess
import sys
import uuid

settings = json.loads(sys.argv[1])
target = "/target"
for name in os.listdir(target):
    if name.startswith(".staging-"):
        shutil.rmtree(os.path.join(target, name), ignore_errors=True)
staging = os.path.join(target, ".staging-" + uuid.uuid4().hex)
os.mkdir(staging)

uv = shutil.which("uv") if settings["installer"] == "uv" else None
index = []
if settings.get("index_url"):
    index += ["--index-url", settings["index_url"]]
for url in settings["extra_index_urls"]:
    index += ["--extra-index-url", url]
requirements = settings["requirements"]

print("installer: " + ("uv" if uv else "pip"), flush=True)
if settings["installer"] == "uv" and not uv:
    print("note: uv is not in the image; using pip", flush=True)

if uv:
    cmd = [uv, "pip", "install", "--python", sys.executable, "--target", staging,
           "--cache-dir", "/cache/uv"] + index
    if settings["only_binary"]:
        cmd += ["--only-binary", ":all:"]
    for host in settings["trusted_hosts"]:
        cmd += ["--allow-insecure-host", host]
    steps = [cmd + requirements]
else:
    # A wheelhouse in the cache volume: `pip download` skips files it already has ("File
    # was already downloaded"), whatever caching headers the index (or a proxy) sends;
    # the install then reads only the wheelhouse.
    wheels = "/cache/wheels"
    os.makedirs(wheels, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--no-input", "--disable-pip-version-check", "--no-cache-dir"]
    binary = ["--only-binary=:all:"] if settings["only_binary"] else []
    trusted = [arg for host in settings["trusted_hosts"] for arg in ("--trusted-host", host)]
    install = pip + ["install", "--root-user-action=ignore", "--no-index", "--find-links", wheels,
                     "--target", staging] + binary + requirements
    # Offline first: when the wheelhouse already satisfies the request, the index is not
    # asked at all (an unpinned requirement gets the cached version; pin one to move on).
    offline = subprocess.run(install, capture_output=True, text=True)
    if offline.returncode == 0:
        print("from the download cache only", flush=True)
        sys.stdout.write(offline.stdout)
        sys.stdout.flush()
        steps = []
    else:
        shutil.rmtree(staging, ignore_errors=True)
        os.mkdir(staging)
        steps = [pip + ["download", "--dest", wheels] + binary + index + trusted + requirements, install]

for step in steps:
    code = subprocess.call(step)
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        sys.exit(code)


def project(dist_info):
    """`Foo_Bar-1.2.dist-info` -> `foo-bar`."""
    return dist_info[: -len(".dist-info")].rsplit("-", 1)[0].lower().replace("_", "-").replace(".", "-")


# A newer version replaces the older one's files and metadata.
installed = [n for n in os.listdir(target) if n.endswith(".dist-info")]
for name in os.listdir(staging):
    if name.endswith(".dist-info"):
        for old in installed:
            if project(old) == project(name):
                shutil.rmtree(os.path.join(target, old), ignore_errors=True)
for name in os.listdir(staging):
    dst = os.path.join(target, name)
    if os.path.isdir(dst) and not os.path.islink(dst):
        shutil.rmtree(dst)
    elif os.path.lexists(dst):
        os.remove(dst)
    os.rename(os.path.join(staging, name), dst)
os.rmdir(staging)
