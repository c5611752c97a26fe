import hydra
from omegaconf import DictConfig
@hydra.main(version_base="1.3", config_path="pkg://cgnet.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    print(cfg)
if __name__ == "__main__":
    main()
