use streams_core::prelude::*;

#[record]
pub struct Reading {
    pub celsius: f64,
}

const READINGS: Topic<f64, Reading> = Topic::new("readings");

#[agent(topic = READINGS)]
async fn show(mut readings: Stream<f64, Reading>) {
    while let Some(reading) = readings.next().await {
        println!("{}", reading.celsius);
    }
}

fn main() {
    let _ = App::new("app").agent(show);
}
