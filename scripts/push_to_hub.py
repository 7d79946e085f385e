#!/usr/bin/env python
"""Upload an exported pipeline folder to the Hugging Face Hub in the hub layout.

    python scripts/push_to_hub.py --pipeline outputs/default/pipeline --repo-id you/drifting-emoji
    python scripts/push_to_hub.py --pipeline outputs/default/pipeline --repo-id you/drifting-emoji \\
        --dry-run staged/        # writes exactly what would be uploaded to staged/, sends nothing

The repository then loads with DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)
or DriftingPipeline.from_pretrained(repo_id, trust_remote_code=True). Authentication: `hf auth
login` or HF_TOKEN.
"""

import argparse
import sys
import tempfile

from t2i_drift.hub import push_to_hub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", required=True, help="exported pipeline folder (standard layout)")
    parser.add_argument("--repo-id", required=True, help="e.g. username/drifting-emoji")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", metavar="DIR", default=None, help="write the upload to DIR and stop")
    parser.add_argument("--commit-message", default="Upload DriftingPipeline (t2i_drift)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        staging = args.dry_run or f"{tmp}/upload"
        try:
            files = push_to_hub(
                args.pipeline,
                args.repo_id,
                staging_dir=staging,
                private=args.private,
                dry_run=args.dry_run is not None,
                commit_message=args.commit_message,
            )
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id}:")
    for name in files:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
