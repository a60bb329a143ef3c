from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as readme:
    long_description = readme.read()

setup(
    name="zkwatcher-supervisor",
    version="0.1.0",
    description="Register supervisord programs in ZooKeeper while they are healthy",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    packages=find_packages(include=["zkwatcher_supervisor", "zkwatcher_supervisor.*"]),
    python_requires=">=3.9",
    install_requires=["kazoo>=2.11", "supervisor>=4.2.5"],
    extras_require={
        "metrics": ["prometheus_client"],
        "sasl": ["pure-sasl"],
        "test": ["pytest>=7", "pytest-timeout", "hypothesis>=6", "ruff", "prometheus_client",
                 "trustme", "pure-sasl"],
    },
    entry_points={
        "console_scripts": ["zkwatcher-supervisor = zkwatcher_supervisor.cli:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Monitoring",
    ],
)
