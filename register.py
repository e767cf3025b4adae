"""Register entry point: register the evaluated model, gate it, move @champion if it earns it.

python register.py --help
"""

from fraud_detection.cli import run
from fraud_detection.config import RegisterConfig
from fraud_detection.steps.register import register

if __name__ == "__main__":
    run(RegisterConfig, register, description=__doc__)
