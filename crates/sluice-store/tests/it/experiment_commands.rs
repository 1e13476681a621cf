//! People's commands to an experiment are kept until it takes them: in the
//! order sent, with who sent each, each taken once.

use sluice_store::ExperimentCommand;

use crate::each_store;

#[tokio::test]
async fn commands_wait_in_the_store_and_are_taken_once() {
    each_store(|store| async move {
        assert!(store.take_experiment_commands(3).await.unwrap().is_empty());
        store
            .add_experiment_command(3, ExperimentCommand::Pause, "ana")
            .await
            .unwrap();
        store
            .add_experiment_command(4, ExperimentCommand::Abort, "bo")
            .await
            .unwrap();
        store
            .add_experiment_command(3, ExperimentCommand::Promote, "cy")
            .await
            .unwrap();
        // In order, with who sent each.
        store
            .add_experiment_command(5, ExperimentCommand::Pause, "ana")
            .await
            .unwrap();
        store
            .add_experiment_command(5, ExperimentCommand::Resume, "bo")
            .await
            .unwrap();
        assert_eq!(
            store.take_experiment_commands(5).await.unwrap(),
            vec![
                (ExperimentCommand::Pause, "ana".to_string()),
                (ExperimentCommand::Resume, "bo".to_string())
            ]
        );
        // Two takers at once (a server and its successor): each command once.
        let (first, second) = tokio::join!(
            store.take_experiment_commands(3),
            store.take_experiment_commands(3)
        );
        let mut taken = first.unwrap();
        taken.extend(second.unwrap());
        taken.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            taken,
            vec![
                (ExperimentCommand::Pause, "ana".to_string()),
                (ExperimentCommand::Promote, "cy".to_string())
            ]
        );
        assert!(store.take_experiment_commands(3).await.unwrap().is_empty());
        assert_eq!(
            store.take_experiment_commands(4).await.unwrap(),
            vec![(ExperimentCommand::Abort, "bo".to_string())],
            "another experiment's wait for it"
        );
    })
    .await;
}
