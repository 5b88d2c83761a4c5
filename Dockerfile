# storyreel for Prefect Docker and Kubernetes work pools (README "Many workers").
#
#   docker build -t storyreel:0.1.0 .
#
# Everything a flow run needs is in the image: the package with the `cloud` extra (boto3 for
# outputs on object storage and the shared clip cache, psycopg for PostgreSQL), ffmpeg (the
# static build imageio-ffmpeg ships in its wheel), the caption fonts (package data), the
# storyboards under specs/. At run time a container talks only to the Prefect API, the vendors
# and the store; nothing is downloaded or installed when a flow run starts (the deployments
# for this image have no pull step that fetches code).
#
# Pin the base by digest for reproducible builds (docker buildx imagetools inspect
# python:3.11-slim-bookworm), and rebuild to take security updates.
FROM python:3.11-slim-bookworm

# HOME, STORYREEL_HOME (run scratch folders), the clip cache and matplotlib's font cache are
# writable by the user below and go with the container: outputs and shared clips live on the
# store (--out s3://..., STORYREEL_CACHE_URL)
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    HOME=/home/storyreel \
    STORYREEL_HOME=/home/storyreel/.storyreel \
    STORYREEL_CACHE_DIR=/home/storyreel/.cache/storyreel \
    MPLCONFIGDIR=/home/storyreel/.config/matplotlib

# an unprivileged user; flow runs never need root
RUN groupadd --system --gid 10001 storyreel \
    && useradd --system --uid 10001 --gid storyreel --create-home \
       --home-dir /home/storyreel --shell /usr/sbin/nologin storyreel

WORKDIR /app

# the package, not editable (the image keeps no build tree it depends on): `cloud` brings
# boto3, `postgres` psycopg (STORYREEL_LEDGER_URL / STORYREEL_DB_URL); then the build fails,
# not the first flow run, if the bundled ffmpeg cannot start
COPY pyproject.toml README.md ./
COPY providers/ providers/
COPY flows/ flows/
RUN python -m pip install '.[cloud,postgres]' \
    && python -c "import imageio_ffmpeg, subprocess; subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-version'], check=True, capture_output=True)" \
    && rm -rf flows providers build ./*.egg-info

# what a deployment names relative to its working folder (/app): storyboards and their assets;
# runs/ for a run given no `out` (gone with the container: give `out` on a store)
COPY specs/ specs/
RUN install -d -o storyreel -g storyreel /app/runs

USER storyreel
# matplotlib builds its font cache once, here, not in every flow run (report charts)
RUN python -c "import matplotlib.pyplot"

# a Prefect worker runs its own command in the container (`prefect flow-run execute`); by
# hand the image runs the CLI: docker run --rm storyreel:0.1.0 storyreel plan specs/demo.yaml
CMD ["storyreel", "--help"]
